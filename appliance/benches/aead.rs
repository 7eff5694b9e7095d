//! AES-128-GCM sealing of 16 KiB records on one core: aws-lc-rs, ring, RustCrypto aes-gcm.
//! `cargo bench -p appliance --bench aead -- --table` prints a side-by-side table from
//! `measure_seal_gbps` and `openssl speed` (what ci/bench-aead runs), then the fast path's
//! record seal per suite and a volume file on tmpfs read and sealed two ways; without
//! `--table`, criterion runs.
use std::time::Duration;

use appliance::tls::bench::{
    measure_record_seal_gbps, measure_seal_gbps, measure_volume_seal_gbps, openssl_speed_gbps,
    paired_record_seal_ratio, AeadProvider, Sealer, VolumeRead,
};
use appliance::tls::{AeadImpl, AeadSuite};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

const RECORD: usize = 16384;

fn seal_16k(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal_aes128gcm");
    group.throughput(Throughput::Bytes(RECORD as u64));
    for provider in AeadProvider::ALL {
        let sealer = Sealer::new(provider);
        let mut buf = vec![0x5au8; RECORD];
        let mut seq = 0u64;
        group.bench_with_input(
            BenchmarkId::new(provider.name(), RECORD),
            &RECORD,
            |b, _| {
                b.iter(|| {
                    seq += 1;
                    sealer.seal(seq, &mut buf)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, seal_16k);

/// A volume file on tmpfs turned into sealed records: read into the buffer and sealed in
/// place, against sealed out of the file's mapping (what `appliance serve` does with a
/// volume on tmpfs). 512 MiB, more than the caches hold, in chunks and buffers as the server's
/// defaults.
fn volume_table(secs: f64, best: f64) {
    const CHUNK: usize = appliance::server::http_app::CHUNK;
    println!("a 512 MiB volume file on tmpfs (/dev/shm) to sealed TLS 1.3 records, {CHUNK}-byte chunks, AES-128-GCM");
    let dir = match tempfile::tempdir_in("/dev/shm") {
        Ok(d) => d,
        Err(e) => return println!("not measured: /dev/shm: {e}"),
    };
    let path = dir.path().join("volume");
    // What the bytes are does not matter to AES-GCM; they only have to be written.
    let data: Vec<u8> = (0..512usize << 20).map(|i| (i ^ (i >> 12)) as u8).collect();
    if let Err(e) = std::fs::write(&path, &data) {
        return println!("not measured: {e}");
    }
    drop(data);
    for with in AeadImpl::ALL {
        for (name, how) in [
            ("pread, seal in place", VolumeRead::ReadThenSeal),
            ("seal from the mapping", VolumeRead::SealFromMapping),
        ] {
            let name = format!("{name} ({})", with.name());
            match measure_volume_seal_gbps(&path, how, with, CHUNK, appliance::server::BUFFERS, Duration::from_secs_f64(secs)) {
                Ok(g) => println!("{:<36} {:>8.2} {:>9.0}%", name, g, 100.0 * g / best),
                Err(e) => println!("{name:<36} not measured: {e}"),
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--table") {
        let secs: f64 = std::env::var("AEAD_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0);
        println!("AES-128-GCM seal, {RECORD}-byte records, one core, {secs} s each");
        println!("{:<22} {:>8} {:>10}", "implementation", "GB/s", "vs best");
        let results: Vec<(AeadProvider, f64)> = AeadProvider::ALL
            .iter()
            .map(|&p| {
                (
                    p,
                    measure_seal_gbps(p, RECORD, Duration::from_secs_f64(secs)),
                )
            })
            .collect();
        let best = results.iter().map(|r| r.1).fold(0.0, f64::max);
        for (p, g) in &results {
            println!("{:<22} {:>8.2} {:>9.0}%", p.name(), g, 100.0 * g / best);
        }
        // OpenSSL in the same run: `openssl speed -evp aes-128-gcm -bytes 16384`.
        match openssl_speed_gbps(secs.ceil() as u32) {
            Ok((g, version)) => println!(
                "{:<22} {:>8.2} {:>9.0}%   ({version})",
                "openssl speed (EVP)",
                g,
                100.0 * g / best
            ),
            Err(e) => println!("openssl speed (EVP): not measured ({e})"),
        }
        println!();
        println!(
            "fast-path TLS 1.3 record seal (seal_in_place_split, aws-lc-rs), {RECORD}-byte records"
        );
        for (name, suite) in [
            ("AES-128-GCM", AeadSuite::Aes128Gcm),
            ("AES-256-GCM", AeadSuite::Aes256Gcm),
            ("ChaCha20-Poly1305", AeadSuite::ChaCha20Poly1305),
        ] {
            let g = measure_record_seal_gbps(suite, RECORD, Duration::from_secs_f64(secs));
            println!("{:<22} {:>8.2} {:>9.0}%", name, g, 100.0 * g / best);
        }
        // Taken in turn with the reference, pair by pair: the record's own cost (its inner
        // content type) is smaller than the spread of the figures above.
        let pairs = 60;
        // About `secs` in all at 10 GB/s.
        let records = ((secs * 10e9 / RECORD as f64 / 2.0 / pairs as f64) as u64).max(100);
        let [q1, median, q3] = paired_record_seal_ratio(RECORD, pairs, records);
        println!(
            "AES-128-GCM record seal time / aws-lc-rs plain seal, {pairs} pairs taken in turn: median {median:.4} (quartiles {q1:.4}-{q3:.4})"
        );
        // What `serve` does at start: a chunk's records sealed by each, the faster chosen.
        let choice = appliance::tls::choice::measure(5, Duration::from_millis(10));
        println!("serve's choice at start (a 512 KiB chunk's records, best of 5 rounds): {}", choice.describe());
        println!();
        volume_table(secs, best);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
