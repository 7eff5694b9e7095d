//! AES-128-GCM sealing speed of the candidate implementations, one core, in-place records
//! with a separate tag as the fast path seals them, and of OpenSSL (`openssl speed`). Used by
//! `benches/aead.rs`, `ci/bench-aead` and `appliance bench`, to print ratios measured side by
//! side.
use std::hint::black_box;
use std::time::{Duration, Instant};

use super::record::Content;

/// An AES-128-GCM implementation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AeadProvider {
    /// aws-lc-rs (AWS-LC, assembly with AVX-512/VAES paths): the fast path's choice.
    AwsLcRs,
    /// ring.
    Ring,
    /// RustCrypto `aes-gcm` (`aes` + `ghash` crates): the independent check in tests.
    RustCrypto,
}

impl AeadProvider {
    pub const ALL: [AeadProvider; 3] = [
        AeadProvider::AwsLcRs,
        AeadProvider::Ring,
        AeadProvider::RustCrypto,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AeadProvider::AwsLcRs => "aws-lc-rs",
            AeadProvider::Ring => "ring",
            AeadProvider::RustCrypto => "aes-gcm (aes+ghash)",
        }
    }
}

const KEY: [u8; 16] = [0x42; 16];
const IV: [u8; 12] = [0x24; 12];

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = IV;
    for (a, b) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *a ^= b;
    }
    n
}

/// A sealer of one provider: seals `buf` in place for record `seq`, writes the tag.
pub struct Sealer(SealerImpl);

enum SealerImpl {
    AwsLc(Box<aws_lc_rs::aead::LessSafeKey>),
    Ring(Box<ring::aead::LessSafeKey>),
    RustCrypto(Box<aes_gcm::Aes128Gcm>),
}

impl Sealer {
    pub fn new(provider: AeadProvider) -> Sealer {
        Sealer(match provider {
            AeadProvider::AwsLcRs => {
                SealerImpl::AwsLc(Box::new(aws_lc_rs::aead::LessSafeKey::new(
                    aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &KEY)
                        .expect("16-byte key"),
                )))
            }
            AeadProvider::Ring => SealerImpl::Ring(Box::new(ring::aead::LessSafeKey::new(
                ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &KEY).expect("16-byte key"),
            ))),
            AeadProvider::RustCrypto => {
                use aes_gcm::KeyInit;
                SealerImpl::RustCrypto(Box::new(aes_gcm::Aes128Gcm::new(&KEY.into())))
            }
        })
    }

    /// Seal `buf` in place as record `seq` with a 5-byte header as AAD; returns the tag.
    pub fn seal(&self, seq: u64, buf: &mut [u8]) -> [u8; 16] {
        let header = [
            23,
            3,
            3,
            ((buf.len() + 16) >> 8) as u8,
            (buf.len() + 16) as u8,
        ];
        let mut tag = [0u8; 16];
        match &self.0 {
            SealerImpl::AwsLc(k) => {
                let n = aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce(seq));
                let t = k
                    .seal_in_place_separate_tag(n, aws_lc_rs::aead::Aad::from(header), buf)
                    .expect("record fits");
                tag.copy_from_slice(t.as_ref());
            }
            SealerImpl::Ring(k) => {
                let n = ring::aead::Nonce::assume_unique_for_key(nonce(seq));
                let t = k
                    .seal_in_place_separate_tag(n, ring::aead::Aad::from(header), buf)
                    .expect("record fits");
                tag.copy_from_slice(t.as_ref());
            }
            SealerImpl::RustCrypto(k) => {
                use aes_gcm::aead::AeadInPlace;
                let t = k
                    .encrypt_in_place_detached(&nonce(seq).into(), &header, buf)
                    .expect("record fits");
                tag.copy_from_slice(&t);
            }
        }
        tag
    }
}

/// Seal `record_len`-byte records back to back for about `duration` on this thread and
/// return plaintext GB/s (10^9 bytes per second).
pub fn measure_seal_gbps(provider: AeadProvider, record_len: usize, duration: Duration) -> f64 {
    let sealer = Sealer::new(provider);
    let mut buf = vec![0x5au8; record_len];
    // Warm up caches and frequency before timing.
    for seq in 0..16 {
        black_box(sealer.seal(seq, &mut buf));
    }
    let start = Instant::now();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    loop {
        for _ in 0..32 {
            black_box(sealer.seal(seq, black_box(&mut buf)));
            seq += 1;
        }
        bytes += 32 * record_len as u64;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return bytes as f64 / elapsed.as_secs_f64() / 1e9;
        }
    }
}

/// The fast path's own TLS 1.3 record function ([`super::record::seal_in_place_split`]:
/// header and type+tag outside the payload, aws-lc-rs) as a sealer of record `seq`'s content.
fn tls13_record_sealer(suite: super::AeadSuite) -> impl FnMut(u64, &mut [u8]) {
    let key = [0x42u8; 32];
    let keys = super::Keys::new(
        super::TlsVersion::Tls13,
        suite,
        &key[..suite.key_len()],
        &IV,
    )
    .expect("valid key length");
    let mut header = [0u8; 5];
    let mut trailer = [0u8; super::record::TLS13_TRAILER_LEN];
    move |seq: u64, payload: &mut [u8]| {
        super::record::seal_in_place_split(&keys, seq, &mut header, payload, 23, &mut trailer)
            .expect("record within limits");
        black_box(&trailer);
    }
}

/// Seal TLS 1.3 records of `record_len` content bytes back to back with the fast path's own
/// record function ([`super::record::seal_in_place_split`]) for about `duration`; returns
/// content GB/s.
pub fn measure_record_seal_gbps(
    suite: super::AeadSuite,
    record_len: usize,
    duration: Duration,
) -> f64 {
    let mut seal = tls13_record_sealer(suite);
    let mut payload = vec![0x5au8; record_len.min(super::record::MAX_PLAINTEXT)];
    for seq in 0..16 {
        seal(seq, &mut payload);
    }
    let start = Instant::now();
    let mut seq = 0u64;
    let mut bytes = 0u64;
    loop {
        for _ in 0..32 {
            seal(seq, black_box(&mut payload));
            seq += 1;
        }
        bytes += 32 * payload.len() as u64;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return bytes as f64 / elapsed.as_secs_f64() / 1e9;
        }
    }
}

/// What the TLS 1.3 record costs beyond a plain seal of its content: the fast path's record
/// seal of `record_len` content bytes (AES-128-GCM, [`super::record::seal_in_place_split`]:
/// the inner content type is one more byte, sealed apart) against the reference's seal of the same
/// bytes (aws-lc-rs, [`Sealer::seal`], what `ref_seal_gbps` measures), hot buffers, in
/// `trials` pairs of runs of `records` records each taken in turn, so that a drift of the
/// machine falls on both alike. Returns the quartiles of the pairs' time ratios (record /
/// reference): [first, median, third]. Measured one after the other (`--table`'s two
/// figures), a 1-3% difference is lost in the spread between runs.
pub fn paired_record_seal_ratio(record_len: usize, trials: usize, records: u64) -> [f64; 3] {
    let reference = Sealer::new(AeadProvider::AwsLcRs);
    let mut record = tls13_record_sealer(super::AeadSuite::Aes128Gcm);
    let mut plain = |seq: u64, buf: &mut [u8]| {
        black_box(reference.seal(seq, buf));
    };
    let mut buf = vec![0x5au8; record_len.min(super::record::MAX_PLAINTEXT)];
    let mut seq = 0u64;
    let mut run = |seal: &mut dyn FnMut(u64, &mut [u8])| {
        let start = Instant::now();
        for _ in 0..records {
            seal(seq, black_box(&mut buf));
            seq += 1;
        }
        start.elapsed().as_secs_f64()
    };
    // One pair to warm caches and clock before any is kept.
    run(&mut plain);
    run(&mut record);
    let mut ratios: Vec<f64> = (0..trials.max(1))
        .map(|i| {
            // Each first in turn: a pair's second run does not always find the other's
            // caches or clock.
            let (p, r) = if i % 2 == 0 {
                let p = run(&mut plain);
                (p, run(&mut record))
            } else {
                let r = run(&mut record);
                (run(&mut plain), r)
            };
            r / p
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: usize| ratios[(ratios.len() - 1) * q / 4];
    [at(1), at(2), at(3)]
}

/// Seal the 16 KiB TLS 1.3 records of `buf[..chunk]` as the pipeline seals a chunk, with
/// `bulk`: in place, or out of `from` (the chunk's bytes in a mapping); each record may borrow
/// the byte after it ([`Content::in_buffer`]). The first is record `*seq`, which ends past the
/// last. Returns the bytes sealed.
pub fn seal_chunk_records(keys: &super::Keys, bulk: &super::BulkKey, buf: &mut [u8], chunk: usize, from: Option<&[u8]>, seq: &mut u64) -> Result<usize, super::RecordError> {
    const RECORD: usize = super::layout::RECORD_PLAINTEXT as usize;
    let (mut header, mut trailer) = ([0u8; super::record::HEADER_LEN], [0u8; super::record::TLS13_TRAILER_LEN]);
    for at in (0..chunk).step_by(RECORD) {
        let range = at..(at + RECORD).min(chunk);
        let content = Content::in_buffer(buf, range, from).ok_or(super::RecordError::BufferTooSmall(chunk))?;
        super::record::seal_split(keys, bulk, *seq, &mut header, content, super::record::CONTENT_APPLICATION_DATA, &mut trailer)?;
        black_box(&trailer);
        *seq += 1;
    }
    Ok(chunk)
}

/// How [`measure_volume_seal_gbps`] takes a volume file's bytes to seal them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeRead {
    /// Read into the chunk buffer (`pread`, or io_uring on a disk), then sealed in place.
    ReadThenSeal,
    /// Sealed out of the file's mapping into the chunk buffer (a file on tmpfs).
    SealFromMapping,
}

/// Seal TLS 1.3 records (16 KiB, AES-128-GCM, the fast path's record functions with `with`)
/// of `chunk`-byte pieces of the volume file at `path`, in order and wrapping around, into one
/// of `buffers` chunk buffers in turn, for about `duration`, taking the bytes as `how`
/// says (through [`drivers::storage::FileStorage`], as the server does). Returns content
/// GB/s, reading included: what it costs the core to turn the file into sealed records.
pub fn measure_volume_seal_gbps(path: &std::path::Path, how: VolumeRead, with: super::AeadImpl, chunk: usize, buffers: usize, duration: Duration) -> Result<f64, String> {
    use drivers::storage::{FileStorage, Storage};
    let mut storage = FileStorage::open(path).map_err(|e| e.to_string())?;
    if how == VolumeRead::ReadThenSeal {
        storage.unmap();
    } else if !storage.is_mapped() {
        return Err(format!("{}: not mapped (not on tmpfs, or not leased)", path.display()));
    }
    let pool = storage.dma_pool(chunk + crate::server::http_app::SEAL_ROOM, buffers.max(1)).map_err(|e| e.to_string())?;
    let mut bufs: Vec<_> = (0..buffers.max(1)).filter_map(|_| pool.alloc()).collect();
    let keys = super::Keys::new(super::TlsVersion::Tls13, super::AeadSuite::Aes128Gcm, &[0x42; 16], &IV).map_err(|e| e.to_string())?;
    let bulk = keys.bulk_key(with);
    let chunks = storage.capacity() / chunk as u64;
    if chunks == 0 {
        return Err(format!("{}: smaller than one {chunk}-byte chunk", path.display()));
    }
    let mut done = Vec::with_capacity(1);
    let (mut next, mut seq, mut bytes) = (0u64, 0u64, 0u64);
    let start = Instant::now();
    loop {
        let offset = (next % chunks) * chunk as u64;
        let mut buf = bufs.pop().ok_or("no buffer")?;
        match how {
            VolumeRead::ReadThenSeal => {
                storage.submit_read(next, offset, chunk, buf).map_err(|(e, _)| e.to_string())?;
                while storage.poll(&mut done) == 0 {}
                let c = done.pop().ok_or("no completion")?;
                c.result.map_err(|e| e.to_string())?;
                buf = c.buf;
                seal_chunk_records(&keys, &bulk, buf.as_mut_slice(), chunk, None, &mut seq).map_err(|e| e.to_string())?;
            }
            VolumeRead::SealFromMapping => {
                let from = storage.mapped(offset, chunk).ok_or("the mapping went away")?;
                seal_chunk_records(&keys, &bulk, buf.as_mut_slice(), chunk, Some(from), &mut seq).map_err(|e| e.to_string())?;
            }
        }
        bufs.insert(0, buf);
        next += 1;
        bytes += chunk as u64;
        let elapsed = start.elapsed();
        if elapsed >= duration {
            return Ok(bytes as f64 / elapsed.as_secs_f64() / 1e9);
        }
    }
}

/// OpenSSL's AES-128-GCM over 16 KiB buffers: `openssl speed -evp aes-128-gcm -bytes 16384
/// -seconds N`, run as a child process (it inherits the calling thread's CPU affinity, so a
/// pinned caller measures its own core). Returns GB/s and `openssl version`'s line.
pub fn openssl_speed_gbps(seconds: u32) -> Result<(f64, String), String> {
    let run = |args: &[&str]| -> Result<String, String> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("openssl: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!("openssl {}: {}, {}", args[0], out.status, err.lines().last().unwrap_or("")));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let secs = seconds.max(1).to_string();
    let out = run(&["speed", "-evp", "aes-128-gcm", "-bytes", "16384", "-seconds", &secs])?;
    let gbps = parse_openssl_speed(&out)?;
    // "OpenSSL 3.0.19 27 Jan 2026 (Library: OpenSSL 3.0.19 27 Jan 2026)": the first part.
    let version = run(&["version"]).map(|v| v.split(" (").next().unwrap_or("").trim().to_string()).unwrap_or_default();
    Ok((gbps, version))
}

/// GB/s from `openssl speed` output: its last line is `<cipher> <N>k`, N in thousands of
/// bytes per second.
pub fn parse_openssl_speed(out: &str) -> Result<f64, String> {
    let last = out.lines().rev().find(|l| !l.trim().is_empty()).ok_or("openssl speed printed nothing")?;
    let field = last.split_whitespace().last().unwrap_or("");
    let kbytes: f64 = field
        .strip_suffix('k')
        .and_then(|n| n.parse().ok())
        .filter(|n: &f64| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("openssl speed: no figure in its last line {last:?}"))?;
    Ok(kbytes * 1000.0 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_providers_produce_identical_records() {
        let sealers: Vec<Sealer> = AeadProvider::ALL.iter().map(|&p| Sealer::new(p)).collect();
        for (seq, len) in [(0u64, 1usize), (7, 100), (1 << 40, 16384)] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let outs: Vec<(Vec<u8>, [u8; 16])> = sealers
                .iter()
                .map(|s| {
                    let mut b = plain.clone();
                    let tag = s.seal(seq, &mut b);
                    (b, tag)
                })
                .collect();
            assert_ne!(outs[0].0, plain);
            assert!(
                outs.windows(2).all(|w| w[0] == w[1]),
                "providers disagree at seq {seq} len {len}"
            );
        }
    }

    #[test]
    fn measurement_counts_bytes() {
        let gbps = measure_seal_gbps(AeadProvider::AwsLcRs, 4096, Duration::from_millis(20));
        assert!(gbps > 0.0 && gbps.is_finite());
        let gbps = measure_record_seal_gbps(
            crate::tls::AeadSuite::ChaCha20Poly1305,
            4096,
            Duration::from_millis(20),
        );
        assert!(gbps > 0.0 && gbps.is_finite());
    }

    #[test]
    fn paired_ratio_gives_ordered_quartiles() {
        let [q1, median, q3] = paired_record_seal_ratio(4096, 5, 20);
        assert!(q1.is_finite() && q1 > 0.0, "{q1}");
        assert!(q1 <= median && median <= q3, "{q1} {median} {q3}");
    }

    #[test]
    fn openssl_speed_output_is_parsed_and_garbage_refused() {
        let out = "CPUINFO: OPENSSL_ia32cap=0x0:0x0\nThe 'numbers' are in 1000s of bytes per second processed.\ntype          16384 bytes\nAES-128-GCM    4247560.27k\n\n";
        let gbps = parse_openssl_speed(out).unwrap();
        assert!((gbps - 4.24756027).abs() < 1e-9, "{gbps}");
        for bad in ["", "\n\n", "type 16384 bytes", "AES-128-GCM 12.5", "AES-128-GCM -3k", "AES-128-GCM nank", "AES-128-GCM k"] {
            assert!(parse_openssl_speed(bad).is_err(), "{bad:?}");
        }
    }
}

/// Server time of one TLS handshake, in microseconds: medians of [`measure_handshakes_us`].
#[derive(Clone, Copy, Debug)]
pub struct HandshakeTimes {
    /// A full handshake of a server that issues no tickets (`serve --no-tls-tickets`).
    pub full_without_tickets: f64,
    /// A full handshake, tickets issued at its end (the default).
    pub full: f64,
    /// A client that comes back with a ticket.
    pub resumed: f64,
}

/// Server time of TLS handshakes in memory, full and resumed (medians of `count` each, the
/// kinds in turn so that a slow spell of the machine falls on all): the handshake driver's
/// steps and the handover of the keys to the fast path. The in-memory rustls client's work is
/// not timed. `client` decides the version (and must trust `server`'s certificate, for
/// `appliance.test`); full handshakes use a copy with a session store of its own, resumed
/// ones come back with a ticket of the connection before. Used by `benches/handshake.rs`.
pub fn measure_handshakes_us(
    server: &std::sync::Arc<rustls::ServerConfig>,
    client: &std::sync::Arc<rustls::ClientConfig>,
    count: usize,
) -> Result<HandshakeTimes, String> {
    let without_tickets = super::handshake::without_resumption(server);
    // A client new to the server: it asks for tickets (a TLS 1.2 server issues one only
    // then) and has none to offer.
    let fresh = || {
        let mut c = (**client).clone();
        c.resumption = rustls::client::Resumption::in_memory_sessions(4);
        std::sync::Arc::new(c)
    };
    // The first connection of `client` gets the tickets the timed ones resume with.
    handshake_server_time(server, client, false)?;
    let mut times = [(); 3].map(|()| Vec::with_capacity(count));
    for _ in 0..count {
        times[0].push(handshake_server_time(&without_tickets, &fresh(), false)?);
        times[1].push(handshake_server_time(server, &fresh(), false)?);
        times[2].push(handshake_server_time(server, client, true)?);
    }
    let [a, b, c] = times.map(|mut v| {
        v.sort_unstable();
        v[v.len() / 2].as_secs_f64() * 1e6
    });
    Ok(HandshakeTimes { full_without_tickets: a, full: b, resumed: c })
}

/// One handshake in memory; the server's share of its time. Fails unless it completed and
/// was (or was not) a resumption as `resumed` says.
fn handshake_server_time(
    server: &std::sync::Arc<rustls::ServerConfig>,
    client: &std::sync::Arc<rustls::ClientConfig>,
    resumed: bool,
) -> Result<Duration, String> {
    use super::handshake::{HandshakeDriver, HandshakeProgress};
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let name = rustls::pki_types::ServerName::try_from("appliance.test").map_err(|x| e(&x))?;
    let mut conn = rustls::ClientConnection::new(client.clone(), name).map_err(|x| e(&x))?;
    let mut driver = HandshakeDriver::new(server.clone()).map_err(|x| e(&x))?;
    let (mut spent, mut sent, mut wire) = (Duration::ZERO, 0u64, Vec::new());
    for _ in 0..8 {
        wire.clear();
        while conn.wants_write() {
            conn.write_tls(&mut wire).map_err(|x| e(&x))?;
        }
        let t = Instant::now();
        let progress = driver.receive(&wire).map_err(|x| e(&x))?;
        spent += t.elapsed();
        while sent < driver.tx_end() {
            let n = conn.read_tls(&mut driver.tx_bytes(sent)).map_err(|x| e(&x))?;
            conn.process_new_packets().map_err(|x| e(&x))?;
            sent += n as u64;
            driver.ack(sent);
        }
        if progress == HandshakeProgress::Complete {
            let t = Instant::now();
            let handover = driver.into_session().map_err(|x| e(&x))?;
            spent += t.elapsed();
            black_box(&handover);
            if conn.is_handshaking() || handover.resumed != resumed {
                return Err(format!("handshake: client still handshaking {}, resumed {} (want {resumed})", conn.is_handshaking(), handover.resumed));
            }
            return Ok(spent);
        }
    }
    Err("handshake did not complete in 8 flights".into())
}
