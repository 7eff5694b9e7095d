//! The whole loop over the simulated link: the server pipeline (TCP, HTTP, volume, file
//! storage) and an in-process client on the same stack, with seeded loss, reordering and
//! duplication. A 50 MB transfer must arrive byte-exact and the retransmission counters move;
//! also with the server's port offering checksum and segmentation offload (64 KiB TCP frames,
//! lost and reordered whole, re-sent as single segments). The default congestion control and
//! pacing, and NewReno and CUBIC paced and not. TLS records are sealed by aws-lc-rs in some
//! cases and by ring in others (`serve --aead`), in place and out of a mapped volume.
use std::io::Write;
use std::time::Duration;

use appliance::loopback::SimHarness;
use appliance::net::tcp::CongestionControl;
use appliance::tls::AeadImpl;
use drivers::nic::sim::SimConfig;
use drivers::storage::FileStorage;

const BIG: usize = 50 * 1000 * 1000;

fn sample_volume(dir: &std::path::Path) -> std::path::PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("video")).unwrap();
    let mut f = std::fs::File::create(tree.join("video/big.ts")).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = BIG;
    while left > 0 {
        for b in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).unwrap();
        left -= n;
    }
    std::fs::write(tree.join("index.m3u8"), b"#EXTM3U\n").unwrap();
    let vol = dir.join("media.vol");
    appliance::volume::pack(&tree, &vol).unwrap();
    vol
}

fn lossy(seed: u64, loss: f64) -> SimConfig {
    SimConfig { seed, loss, reorder: 0.01, duplicate: 0.01, delay: Duration::from_millis(1), jitter: Duration::from_micros(200), ..SimConfig::default() }
}

fn transfer(loss: f64, seed: u64, tls: bool) {
    transfer_with(loss, seed, tls, false)
}

fn transfer_with(loss: f64, seed: u64, tls: bool, offload: bool) {
    let tcp = appliance::net::tcp::Config::default();
    transfer_tcp(loss, seed, tls, offload, tcp.congestion, tcp.pacing)
}

fn transfer_tcp(loss: f64, seed: u64, tls: bool, offload: bool, congestion: CongestionControl, pacing: bool) {
    transfer_from(loss, seed, tls, offload, congestion, pacing, false, AeadImpl::AwsLcRs)
}

/// `in_memory`: the volume on tmpfs, mapped, so that records are sealed out of the mapping
/// (and sealed from it again for each retransmission). `aead` seals the records.
#[allow(clippy::too_many_arguments)] // one test's knobs
fn transfer_from(loss: f64, seed: u64, tls: bool, offload: bool, congestion: CongestionControl, pacing: bool, in_memory: bool, aead: AeadImpl) {
    let dir = if in_memory { tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm") } else { tempfile::tempdir().unwrap() };
    let vol_path = sample_volume(dir.path());
    let mut storage = FileStorage::open(&vol_path).unwrap();
    assert_eq!(storage.is_mapped(), in_memory);
    let volume = appliance::volume::load(&mut storage).unwrap();
    let expected = volume.lookup("/video/big.ts").unwrap().sha256;
    let to_client = SimConfig { tso: offload, ..lossy(seed, loss) };
    let mut h = SimHarness::new(storage, volume, to_client, lossy(seed ^ 0xabcdef, loss), 64);
    h.server.stack.cfg.tcp.congestion = congestion;
    h.server.stack.cfg.tcp.pacing = pacing;
    h.server.app.seal_with(aead);
    assert_eq!(drivers::nic::Nic::link(&h.server.nic).offloads.tso_max_payload > 0, offload);
    if tls {
        let (server, client) = appliance::loopback::test_tls_configs().unwrap();
        h.enable_tls(server, client);
        assert!(h.start_fetch_tls("/video/big.ts", None), "ARP resolution over the lossy link");
    } else {
        assert!(h.start_fetch("/video/big.ts", None), "ARP resolution over the lossy link");
    }
    assert!(h.run_until_fetches(1, Duration::from_secs(3600)), "transfer did not finish in an hour of virtual time");
    let f = &h.client_app.fetches[0];
    assert_eq!(f.status, 200);
    assert!(f.complete, "got {} of {BIG} bytes", f.body_len);
    assert_eq!(f.body_len, BIG as u64);
    assert_eq!(f.sha256, expected, "body differs from the packed file");
    let stats = h.server.stats();
    assert!(stats.tcp_retransmits > 0, "loss {loss}: the retransmission counter must move");
    if offload {
        // Most data went out in frames of many segments. Paced, a frame carries about 1 ms
        // of the pacing rate, at least two segments: a small window at this loss rate (NewReno's)
        // makes frames of three or four.
        let frames = drivers::nic::Nic::counters(&h.server.nic).tx_packets;
        let segs_per_frame = if pacing { 2 } else { 4 };
        assert!(frames < (BIG / 1448 / segs_per_frame) as u64, "{frames} frames for {BIG} bytes: segmentation offload unused");
    }
    if tls {
        // Re-read and re-sealed records after timeouts must still open in the client.
        assert_eq!(h.client_app.tls_failures, 0, "the client rejected a record");
        assert_eq!(stats.tls_handshakes, 1);
        assert!(stats.tls_records_sealed > (BIG / 16384) as u64, "every record sealed at least once");
        assert!(stats.tcp_rto_timeouts > 0, "timeouts released chunks: records were read and sealed again");
    }
    // Mapped, every body chunk is taken from the mapping (the volume's index was read before).
    let mapped = drivers::storage::Storage::counters(&h.server.app.storage).mapped_reads;
    if in_memory && tls {
        assert_eq!(mapped, stats.storage_reads, "every chunk sealed out of the mapping");
        assert!(mapped > (BIG / appliance::server::http_app::CHUNK) as u64, "chunks were sealed from the mapping again");
    } else {
        assert_eq!(mapped, 0);
    }
    // A retransmission reads the records (or blocks) it resends, not their whole 256 KiB
    // chunk: 1.06-1.34 bytes read per body byte in these cases (1.19-2.06 when it read
    // the chunk).
    let read_per_byte = stats.storage_read_bytes as f64 / BIG as f64;
    assert!(read_per_byte < 1.5, "{read_per_byte:.3} bytes read per body byte: retransmissions re-read whole chunks");
    // Let the connection close and check nothing is left behind.
    h.run_until(Duration::from_secs(120), |h| h.server.stack.connection_count() == 0 && h.server.app.buffers_free() == 64);
    assert_eq!(h.server.stack.connection_count(), 0, "server connection state reclaimed");
    assert_eq!(h.server.app.buffers_free(), 64, "every storage buffer returned");
    eprintln!(
        "loss {loss}: retransmits {} (fast {}, timeouts {}), storage reads {} ({:.3} bytes read per body byte)",
        stats.tcp_retransmits,
        stats.tcp_fast_retransmits,
        stats.tcp_rto_timeouts,
        stats.storage_reads,
        stats.storage_read_bytes as f64 / BIG as f64
    );
}

#[test]
fn fifty_megabytes_at_one_percent_loss() {
    transfer(0.01, 1, false);
}

#[test]
fn fifty_megabytes_at_five_percent_loss() {
    transfer(0.05, 2, false);
}

#[test]
fn fifty_megabytes_over_tls_at_two_percent_loss() {
    transfer(0.02, 3, true);
}

#[test]
fn fifty_megabytes_with_segmentation_offload_at_two_percent_loss() {
    transfer_with(0.02, 4, false, true);
}

#[test]
fn fifty_megabytes_over_tls_sealed_by_ring_with_segmentation_offload_at_two_percent_loss() {
    let tcp = appliance::net::tcp::Config::default();
    transfer_from(0.02, 5, true, true, tcp.congestion, tcp.pacing, false, AeadImpl::Ring);
}

#[test]
fn fifty_megabytes_over_tls_sealed_out_of_a_volume_in_memory_at_two_percent_loss() {
    let tcp = appliance::net::tcp::Config::default();
    transfer_from(0.02, 9, true, true, tcp.congestion, tcp.pacing, true, AeadImpl::AwsLcRs);
}

#[test]
fn fifty_megabytes_over_tls_sealed_by_ring_out_of_a_volume_in_memory_at_two_percent_loss() {
    let tcp = appliance::net::tcp::Config::default();
    transfer_from(0.02, 11, true, true, tcp.congestion, tcp.pacing, true, AeadImpl::Ring);
}

#[test]
fn fifty_megabytes_plain_from_a_volume_in_memory_at_one_percent_loss() {
    let tcp = appliance::net::tcp::Config::default();
    transfer_from(0.01, 10, false, false, tcp.congestion, tcp.pacing, true, AeadImpl::AwsLcRs);
}

#[test]
fn fifty_megabytes_newreno_at_one_percent_loss() {
    transfer_tcp(0.01, 6, false, false, CongestionControl::NewReno, false);
}

#[test]
fn fifty_megabytes_newreno_paced_with_segmentation_offload_at_two_percent_loss() {
    transfer_tcp(0.02, 7, false, true, CongestionControl::NewReno, true);
}

#[test]
fn fifty_megabytes_cubic_paced_at_five_percent_loss() {
    transfer_tcp(0.05, 8, false, false, CongestionControl::Cubic, true);
}
