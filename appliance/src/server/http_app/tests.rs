//! Tests of the HTTP application over the simulated link and with its parts alone.

use std::time::Duration;

use drivers::nic::sim::SimConfig;

use crate::loopback::{tiny_volume, SimHarness};
use crate::net::{MS, SEC};

#[test]
fn a_partial_head_gets_408_after_the_header_timeout() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    assert_eq!(h.server.app.header_timeout, super::DEFAULT_HEADER_TIMEOUT);
    h.server.app.header_timeout = 3 * SEC;
    h.start_raw(b"GET /index.html HTTP/1.1\r\nHost: x\r\nX-Slow: 1").expect("connect");
    h.start_raw(b"").expect("connect"); // a connection that never sends anything
    assert!(h.start_fetch("/index.html", None));
    h.run_for(Duration::from_millis(2900));
    // The whole request was served at once; the other two are still waiting.
    assert_eq!(h.client_app.fetches.iter().map(|f| f.status).collect::<Vec<_>>(), vec![200]);
    assert_eq!(h.server.stats().http_header_timeouts, 0);
    h.run_for(Duration::from_millis(400));
    let s = h.server.stats();
    assert_eq!(s.http_header_timeouts, 2, "both slow connections timed out");
    assert_eq!(s.http_status_408, 1, "the partial head was answered 408");
    h.run_for(Duration::from_secs(3)); // TIME-WAIT is 2 s
    let mut statuses: Vec<_> = h.client_app.fetches.iter().map(|f| f.status).collect();
    statuses.sort_unstable();
    assert_eq!(statuses, vec![0, 200, 408], "the silent one was closed without an answer");
    assert_eq!(h.server.stack.connection_count(), 0, "{} left", h.server.stack.connection_count());
}

#[test]
fn the_header_clock_restarts_per_request_and_zero_disables_it() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    h.server.app.header_timeout = 0;
    h.start_raw(b"GET /index.html HTTP/1.1\r\nHost: x\r\n").expect("connect");
    h.run_for(Duration::from_secs(30));
    assert_eq!(h.server.stats().http_header_timeouts, 0);
    assert_eq!(h.server.stack.connection_count(), 1, "no header timeout, idle timeout not reached");
    // A keep-alive connection with a complete request has no head clock running.
    h.server.app.header_timeout = 2 * SEC;
    h.start_raw(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n").expect("connect");
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stats().http_header_timeouts, 0, "between requests only the idle timeout applies");
    assert_eq!(h.server.stats().http_status_2xx, 1);
}

/// File storage whose reads of `bad` fail with `error`, `delay_polls` polls after they
/// were submitted (a media error at once; a command timeout, as the NVMe driver reports
/// one after resetting a silent controller, late).
struct FailingReads {
    inner: drivers::storage::FileStorage,
    bad: std::ops::Range<u64>,
    error: drivers::storage::StorageError,
    delay_polls: u32,
    failed: u64,
    failed_bytes: u64,
    /// Refuse reads of `bad` at submission instead (a controller that failed for good).
    refuse: bool,
    /// Completions held back, with the polls left before they are handed out.
    held: Vec<(u32, drivers::storage::Completion)>,
    /// Reads of `bad` in flight in `inner`: tag and length.
    bad_tags: Vec<(u64, usize)>,
}

impl FailingReads {
    fn new(inner: drivers::storage::FileStorage, bad: std::ops::Range<u64>, error: drivers::storage::StorageError, delay_polls: u32) -> Self {
        FailingReads { inner, bad, error, delay_polls, failed: 0, failed_bytes: 0, refuse: false, held: Vec::new(), bad_tags: Vec::new() }
    }
}

impl drivers::storage::Storage for FailingReads {
    fn backend(&self) -> &'static str {
        "file"
    }
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn block_size(&self) -> usize {
        self.inner.block_size()
    }
    fn dma_pool(&mut self, buf_size: usize, count: usize) -> Result<drivers::storage::DmaPool, drivers::storage::StorageError> {
        self.inner.dma_pool(buf_size, count)
    }
    fn submit_read(&mut self, tag: u64, offset: u64, len: usize, buf: drivers::storage::DmaBuf) -> Result<(), (drivers::storage::StorageError, drivers::storage::DmaBuf)> {
        if self.refuse && self.bad.contains(&offset) {
            // Counted as the inner backend's refusals are: an error, not a read.
            self.failed += 1;
            return Err((self.error.clone(), buf));
        }
        self.inner.submit_read(tag, offset, len, buf)?;
        if self.bad.contains(&offset) {
            // Its completion becomes a failure when it arrives (see poll).
            self.bad_tags.push((tag, len));
        }
        Ok(())
    }
    fn poll(&mut self, out: &mut Vec<drivers::storage::Completion>) -> usize {
        let before = out.len();
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].0 == 0 {
                out.push(self.held.remove(i).1);
            } else {
                self.held[i].0 -= 1;
                i += 1;
            }
        }
        let mut done = Vec::with_capacity(64);
        self.inner.poll(&mut done);
        for mut c in done {
            let Some(at) = self.bad_tags.iter().position(|&(tag, _)| tag == c.tag) else {
                out.push(c);
                continue;
            };
            // A failure, held back for a while.
            let (_, len) = self.bad_tags.swap_remove(at);
            c.result = Err(self.error.clone());
            self.failed += 1;
            self.failed_bytes += len as u64;
            if self.delay_polls == 0 {
                out.push(c);
            } else {
                self.held.push((self.delay_polls - 1, c));
            }
        }
        out.len() - before
    }
    fn in_flight(&self) -> usize {
        self.held.len() + self.inner.in_flight()
    }
    /// The file's counts with the failed reads moved from reads to errors (timeouts).
    fn counters(&self) -> drivers::storage::StorageCounters {
        let mut c = self.inner.counters();
        if !self.refuse {
            c.reads -= self.failed;
            c.read_bytes -= self.failed_bytes;
        }
        c.errors += self.failed;
        if self.error == drivers::storage::StorageError::Timeout {
            c.timeouts += self.failed;
        }
        c
    }
}

/// A read that fails (`error`, after `delay_polls` polls) ends only the transfer that
/// needed the block: the other one, on the same core at the same time, completes
/// byte-exact; the error is counted; nothing leaks.
fn a_failing_read_ends_only_its_transfer(error: drivers::storage::StorageError, delay_polls: u32) {
    let (_dir, storage, volume) = tiny_volume();
    let a = volume.lookup("/a.txt").unwrap().clone();
    let index_len = volume.lookup("/index.html").unwrap().size;
    let bad = a.offset..a.offset + a.extent_len();
    let storage = FailingReads::new(storage, bad, error, delay_polls);
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    assert!(h.start_fetch("/a.txt", None));
    assert!(h.start_fetch("/index.html", None));
    assert!(h.run_until_fetches(2, Duration::from_secs(30)));
    let by_len = |n: u64| h.client_app.fetches.iter().find(|f| f.body_len == n || (n == 0 && !f.complete)).cloned();
    let good = by_len(index_len).expect("the index fetch");
    assert!(good.complete && good.status == 200, "{good:?}");
    let failed = by_len(0).expect("the failed fetch");
    assert!(!failed.complete, "{failed:?}");
    assert!(h.server.app.storage.failed >= 1);
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stack.connection_count(), 0, "connections reclaimed");
    assert_eq!(h.server.app.buffers_free(), 16, "every buffer back");
    assert_eq!(drivers::storage::Storage::in_flight(&h.server.app.storage), 0);
    // Every failed read is counted once it completes, also one ahead of the first failure
    // that completes after its connection was closed (how many were read ahead depends on
    // the real file backend's timing).
    assert_eq!(h.server.stats().storage_errors, h.server.app.storage.failed);
}

/// With zero-copy transmit the NIC may still point at free storage buffers: a read waits
/// until it lets go of one, re-checked on every loop iteration without allocating (one
/// held wait counted, however long the wait), and the pool keeps asking the NIC meanwhile.
#[test]
fn reads_wait_for_buffers_the_nic_still_holds() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    struct AllHeld(AtomicBool, AtomicU64);
    impl drivers::storage::DeviceHolds for AllHeld {
        fn held(&self, _index: usize) -> bool {
            self.0.load(Relaxed)
        }
        fn wanted(&self, _delayed: bool) {
            self.1.fetch_add(1, Relaxed);
        }
    }
    let (_dir, storage, volume) = tiny_volume();
    let a = volume.lookup("/a.txt").unwrap().clone();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    let holds = std::sync::Arc::new(AllHeld(AtomicBool::new(true), AtomicU64::new(0)));
    h.server.app.pool().add_device_holds(holds.clone());
    assert!(h.start_fetch("/a.txt", None));
    h.run_for(Duration::from_millis(300));
    assert_eq!(h.server.stats().storage_reads, 0, "no read into a held buffer");
    assert!(h.client_app.fetches.is_empty(), "the response waits");
    // Allocations are tried when the connection runs for other reasons (the request, the
    // client's segments), not on every loop iteration: those only re-check.
    let (waits, asked) = (h.server.app.pool().held_waits(), holds.1.load(Relaxed));
    eprintln!("held waits {waits}, NIC asked to let go {asked} times");
    assert!((1..=8).contains(&waits), "{waits} allocations failed: no busy allocation");
    assert!(asked > 10 * waits, "the NIC was asked to let go on every iteration ({asked})");
    holds.0.store(false, Relaxed);
    assert!(h.run_until_fetches(1, Duration::from_secs(30)));
    let f = &h.client_app.fetches[0];
    assert!(f.complete && f.status == 200 && f.body_len == a.size, "{f:?}");
    assert_eq!(h.server.app.pool().held_waits(), waits);
}

#[test]
fn a_failed_read_ends_only_its_transfer() {
    a_failing_read_ends_only_its_transfer(drivers::storage::StorageError::Device("media error (test)".into()), 0);
}

/// A timed-out read (reported late, as after a controller reset) ends only its transfer,
/// while the other transfer goes on meanwhile.
#[test]
fn a_timed_out_read_ends_only_its_transfer() {
    a_failing_read_ends_only_its_transfer(drivers::storage::StorageError::Timeout, 2000);
}

/// Bytes that differ at every offset and from drive to drive.
fn drive_bytes(drive: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 31 + i / 4096 * 7) as u8) ^ drive.wrapping_mul(0x5b).wrapping_add(drive)).collect()
}

/// The tiny volume served over HTTP and HTTPS, with 16 storage buffers.
fn tiny_tls_harness() -> (tempfile::TempDir, SimHarness<drivers::storage::FileStorage>) {
    let (dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    let (server, client) = crate::loopback::test_tls_configs().unwrap();
    h.enable_tls(server, client);
    (dir, h)
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Two drives, every read of drive 1 failing (`error`, after `delay_polls` polls): the
/// transfers from drive 1 end, counted on drive 1; those from drive 0 (a path on both
/// drives included, served from drive 0, the first listed) complete byte-exact meanwhile
/// and after; nothing leaks.
fn two_drives_one_failing(error: drivers::storage::StorageError, delay_polls: u32) {
    use drivers::storage::{Drives, Storage};
    let (zero, one) = (drive_bytes(0, 300_000), drive_bytes(1, 300_000));
    let (_d0, s0, v0) = crate::loopback::volume_of(&[("zero.ts", &zero), ("both.txt", b"from drive 0")]);
    let (_d1, s1, v1) = crate::loopback::volume_of(&[("one.ts", &one), ("both.txt", b"from drive 1 (hidden)"), ("small.txt", b"x")]);
    // Reads loading the index, before serving.
    let loaded1 = s1.counters().reads;
    let drives = Drives::new(vec![
        FailingReads::new(s0, 0..0, error.clone(), 0),
        FailingReads::new(s1, 0..u64::MAX, error.clone(), delay_polls),
    ])
    .unwrap();
    let library = crate::volume::Library::new(vec![("zero.vol".into(), v0), ("one.vol".into(), v1)]);
    assert_eq!(library.shadowed().len(), 1);
    let mut h = SimHarness::new(drives, library, SimConfig::default(), SimConfig::default(), 16);
    for path in ["/one.ts", "/zero.ts", "/small.txt", "/both.txt"] {
        assert!(h.start_fetch(path, None), "{path}");
    }
    assert!(h.run_until_fetches(4, Duration::from_secs(60)), "{:?}", h.client_app.fetches);
    let fetches = h.client_app.fetches.clone();
    let done = |want: &[u8]| fetches.iter().any(|f| f.complete && f.status == 200 && f.body_len == want.len() as u64 && f.sha256 == sha(want));
    assert!(done(&zero), "drive 0's large file, byte-exact: {fetches:?}");
    assert!(done(b"from drive 0"), "the path on both drives comes from drive 0: {fetches:?}");
    assert_eq!(fetches.iter().filter(|f| !f.complete).count(), 2, "drive 1's two transfers ended: {fetches:?}");
    let storage = &h.server.app.storage;
    let (c0, c1) = (storage.drive_counters(0), storage.drive_counters(1));
    assert_eq!(c0.errors, 0);
    // The index's reads, and at least one per chunk of the large file.
    assert!(c0.reads >= 3 + 300_000u64.div_ceil(super::CHUNK as u64), "{c0:?}");
    assert!(c1.errors >= 2 && c1.reads == loaded1, "{c1:?}");
    assert_eq!(c1.timeouts, if error == drivers::storage::StorageError::Timeout { c1.errors } else { 0 });
    assert_eq!(h.server.stats().storage_errors, c1.errors, "every failed read counted by the pipeline too");
    // Drive 0 keeps serving.
    assert!(h.start_fetch("/zero.ts", Some((1000, 250_000))));
    assert!(h.run_until_fetches(5, Duration::from_secs(30)));
    let last = h.client_app.fetches.last().unwrap();
    assert!(last.complete && last.status == 206 && last.sha256 == sha(&zero[1000..=250_000]), "{last:?}");
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stack.connection_count(), 0, "connections reclaimed");
    assert_eq!(h.server.app.buffers_free(), 16, "every buffer back");
    assert_eq!(h.server.app.storage.in_flight(), 0);
}

#[test]
fn a_failing_drive_ends_only_its_transfers() {
    two_drives_one_failing(drivers::storage::StorageError::Device("media error (test)".into()), 0);
}

#[test]
fn a_timing_out_drive_ends_only_its_transfers() {
    two_drives_one_failing(drivers::storage::StorageError::Timeout, 2000);
}

/// A drive whose reads are refused outright (a controller that failed for good) ends the
/// transfers that need it at once, rather than leaving them to the idle timeout.
#[test]
fn a_refused_read_ends_its_transfer() {
    use drivers::storage::{Drives, Storage};
    let (_d0, s0, v0) = crate::loopback::volume_of(&[("zero.txt", b"zero")]);
    let (_d1, s1, v1) = crate::loopback::volume_of(&[("one.txt", b"one")]);
    let library = crate::volume::Library::new(vec![("zero.vol".into(), v0), ("one.vol".into(), v1)]);
    let failed = drivers::storage::StorageError::Device("controller failed (test)".into());
    let mut s1 = FailingReads::new(s1, 0..u64::MAX, failed.clone(), 0);
    s1.refuse = true;
    let drives = Drives::new(vec![FailingReads::new(s0, 0..0, failed, 0), s1]).unwrap();
    let mut h = SimHarness::new(drives, library, SimConfig::default(), SimConfig::default(), 16);
    assert!(h.start_fetch("/one.txt", None));
    assert!(h.start_fetch("/zero.txt", None));
    assert!(h.run_until_fetches(2, Duration::from_secs(5)), "ended within seconds, not at the idle timeout");
    let f = &h.client_app.fetches;
    assert!(f.iter().any(|f| f.complete && f.sha256 == sha(b"zero")), "{f:?}");
    assert!(f.iter().any(|f| !f.complete), "{f:?}");
    assert!(h.server.app.storage.drive_counters(1).errors >= 1);
    assert!(h.server.stats().storage_errors >= 1);
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stack.connection_count(), 0);
    assert_eq!(h.server.app.buffers_free(), 16);
}

/// Two NVMe drives (the in-memory controller model, each namespace holding a volume of one
/// file, `/zero.ts` and `/one.ts`, one DMA space as one vfio container gives) under the
/// whole pipeline; the file bytes and the models.
#[allow(clippy::type_complexity)]
fn two_nvme_drives(
    len: usize,
    model: ModelConfigFn,
) -> (
    SimHarness<drivers::storage::Drives<drivers::storage::nvme::NvmeStorage>>,
    [Vec<u8>; 2],
    [std::sync::Arc<drivers::storage::nvme::model::Model>; 2],
) {
    use drivers::storage::nvme::model::{FakeDma, Model};
    use drivers::storage::nvme::{NvmeConfig, NvmeController};
    let (zero, one) = (drive_bytes(0, len), drive_bytes(1, len));
    let (d0, _s0, v0) = crate::loopback::volume_of(&[("zero.ts", &zero)]);
    let (d1, _s1, v1) = crate::loopback::volume_of(&[("one.ts", &one)]);
    let image = |d: &tempfile::TempDir| std::fs::read(d.path().join("media.vol")).unwrap();
    let dma = FakeDma::new();
    let models = [Model::new(dma.clone(), model(&image(&d0))), Model::new(dma.clone(), model(&image(&d1)))];
    let config = NvmeConfig { queue_depth: 16, command_timeout: Duration::from_millis(50), ..NvmeConfig::default() };
    let queue = |m: &std::sync::Arc<Model>| {
        NvmeController::new(m.clone(), std::sync::Arc::new(dma.clone()), &config, "model").unwrap().into_queues().unwrap().remove(0).into_storage()
    };
    let drives = drivers::storage::Drives::new(vec![queue(&models[0]), queue(&models[1])]).unwrap();
    let library = crate::volume::Library::new(vec![("nvme:model0".into(), v0), ("nvme:model1".into(), v1)]);
    (SimHarness::new(drives, library, SimConfig::default(), SimConfig::default(), 16), [zero, one], models)
}

type ModelConfigFn = fn(&[u8]) -> drivers::storage::nvme::model::ModelConfig;

/// Run until `n` fetches ended or `stop` holds (bounded by 30 s of real time). The
/// virtual clock runs while the controller's command timeout runs in real time: idle
/// rounds sleep a little, so that the reset comes long before any TCP or HTTP timeout.
fn run_real<S: drivers::storage::Storage>(h: &mut SimHarness<S>, n: usize, stop: &dyn Fn(&SimHarness<S>) -> bool) {
    let start = std::time::Instant::now();
    while h.client_app.fetches.len() < n && !stop(h) && start.elapsed() < Duration::from_secs(30) {
        if !h.step(true) {
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Drive 1's controller stops answering in the middle of a transfer. Its read times out,
/// the controller is reset (counted on drive 1), that transfer ends; drive 0's transfer
/// completes byte-exact meanwhile; after the reset drive 1 serves again.
#[test]
fn a_silent_nvme_drive_is_reset_and_the_other_keeps_serving() {
    use drivers::storage::Storage;
    let (mut h, [zero, one], [m0, m1]) = two_nvme_drives(3_000_000, drivers::storage::nvme::model::ModelConfig::with_image);
    assert!(h.start_fetch("/one.ts", None));
    assert!(h.start_fetch("/zero.ts", None));
    // Drive 1 goes silent once some of its file is out.
    run_real(&mut h, 2, &|h| h.server.app.storage.drive_counters(1).reads >= 3);
    assert!(h.server.app.storage.drive_counters(1).reads >= 3, "drive 1 was serving");
    m1.hang();
    run_real(&mut h, 2, &|_| false);
    let fetches = h.client_app.fetches.clone();
    assert_eq!(fetches.len(), 2, "{fetches:?}");
    assert!(fetches.iter().any(|f| f.complete && f.sha256 == sha(&zero)), "drive 0's file, byte-exact: {fetches:?}");
    assert!(fetches.iter().any(|f| !f.complete && f.body_len < one.len() as u64), "drive 1's transfer ended: {fetches:?}");
    let storage = &h.server.app.storage;
    let (c0, c1) = (storage.drive_counters(0), storage.drive_counters(1));
    assert_eq!((c0.errors, c0.timeouts, c0.resets), (0, 0, 0), "{c0:?}");
    assert!(c1.timeouts >= 1 && c1.errors >= c1.timeouts && c1.resets == 1, "{c1:?}");
    assert_eq!(h.server.stats().storage_errors, c1.errors);
    assert_eq!(m1.stats().disables, 1, "drive 1's controller was reset");
    assert_eq!(m0.stats().disables, 0, "drive 0's was not");
    assert_eq!(storage.counters().resets, 1);
    // Reset, drive 1 answers again.
    assert!(h.start_fetch("/one.ts", None));
    run_real(&mut h, 3, &|_| false);
    let last = h.client_app.fetches.last().unwrap();
    assert!(last.complete && last.sha256 == sha(&one), "{last:?}");
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stack.connection_count(), 0);
    assert_eq!(h.server.app.buffers_free(), 16, "every buffer back");
}

/// Drive 1's controller dies (a reset does not bring it back): its transfer times out
/// and ends, later requests for its files are refused at once and end, and drive 0 keeps
/// serving byte-exact throughout.
#[test]
fn a_dead_nvme_drive_ends_its_transfers_and_the_other_keeps_serving() {
    use drivers::storage::Storage;
    let short_reset = |image: &[u8]| drivers::storage::nvme::model::ModelConfig { timeout_units: 1, ..drivers::storage::nvme::model::ModelConfig::with_image(image) };
    let (mut h, [zero, _one], [_m0, m1]) = two_nvme_drives(1_000_000, short_reset);
    m1.die();
    assert!(h.start_fetch("/one.ts", None));
    assert!(h.start_fetch("/zero.ts", None));
    run_real(&mut h, 2, &|_| false);
    assert!(m1.dma_stopped(), "the dead controller was cut off the bus");
    for round in 0..2 {
        assert!(h.start_fetch("/one.ts", Some((round * 1000, 500_000))));
        assert!(h.start_fetch("/zero.ts", Some((round * 1000, 500_000))));
    }
    run_real(&mut h, 6, &|_| false);
    let fetches = h.client_app.fetches.clone();
    assert_eq!(fetches.len(), 6, "{fetches:?}");
    assert_eq!(fetches.iter().filter(|f| !f.complete).count(), 3, "drive 1's three transfers ended: {fetches:?}");
    assert!(fetches.iter().any(|f| f.complete && f.sha256 == sha(&zero)));
    for round in 0..2 {
        let want = sha(&zero[round * 1000..=500_000]);
        assert!(fetches.iter().any(|f| f.complete && f.status == 206 && f.sha256 == want), "{fetches:?}");
    }
    let c1 = h.server.app.storage.drive_counters(1);
    assert!(c1.timeouts >= 1 && c1.errors >= 3 && c1.resets == 1, "{c1:?}");
    assert_eq!(h.server.app.storage.drive_counters(0).errors, 0);
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stack.connection_count(), 0);
    assert_eq!(h.server.app.buffers_free(), 16, "every buffer back");
}

/// Found by the `net_frames` fuzz target (fuzz/regressions/net_frames/tls-bad-record-after-fin):
/// a bad record arriving after the server had queued its FIN (here after a `Connection:
/// close` response) made it queue a fatal alert behind the FIN (a debug assertion in TCP).
/// Now the record is counted, nothing is sent after the FIN, and the response completes.
#[test]
fn a_bad_record_after_our_fin_is_counted_and_sends_nothing_more() {
    let (_dir, mut h) = tiny_tls_harness();
    assert!(h.start_fetch_tls("/a.txt", None));
    while h.client_app.body_bytes == 0 {
        assert!(h.now() < 10 * SEC, "no response");
        h.step(true);
    }
    let port = h.client.connections().next().map(|(_, k, _)| k.local_port).expect("the fetch's connection");
    let before = h.server.stats();
    // An application-data record whose tag cannot verify.
    let mut bad = vec![0x17, 0x03, 0x03, 0x00, 0x20];
    bad.extend_from_slice(&[0x5a; 0x20]);
    assert!(h.send_more(port, &bad));
    assert!(h.run_until_fetches(1, Duration::from_secs(30)));
    // The fetch can complete before the server has read the record.
    h.run_for(Duration::from_secs(5));
    let after = h.server.stats();
    assert_eq!(after.tls_bad_records, before.tls_bad_records + 1, "the bad record is counted");
    let f = &h.client_app.fetches[0];
    assert!(f.complete && f.status == 200 && f.body_len == 100_000, "{f:?}");
    assert_eq!(h.server.stack.connection_count(), 0);
}

/// An idle HTTPS connection drops its AEAD contexts (keeping only raw keys) and builds
/// them again when the peer sends its next request, which is answered byte-exact; nothing
/// was sealed or opened with sleeping keys.
#[test]
fn an_idle_tls_connection_holds_no_aead_context_until_its_next_request() {
    let (_dir, mut h) = tiny_tls_harness();
    assert!(h.start_keep_alive(true, "/a.txt", None));
    assert!(h.run_until_fetches(1, Duration::from_secs(10)));
    h.run_for(Duration::from_millis(200));
    let session_of = |h: &SimHarness<_>| {
        let (_, _, e) = h.server.stack.connections().next().expect("the connection");
        let s = h.server.app.held.session(&e.app).expect("a TLS session");
        (s.keys_awake(), s.aead_context_bytes(), s.cold_key_uses(), h.server.app.foreign_heap_bytes(&e.app))
    };
    assert_eq!(session_of(&h), (false, 0, 0, 0), "idle: keys asleep, no C heap");
    assert_eq!(h.server.stats().tls_key_contexts_built, 0);
    let port = h.client.connections().next().map(|(_, k, _)| k.local_port).expect("the client connection");
    assert!(h.request_again(port, "/a.txt", Some((10, 99_999))));
    assert!(h.run_until_fetches(2, Duration::from_secs(10)));
    let f = &h.client_app.fetches[1];
    assert!(f.complete && f.status == 206 && f.body_len == 99_990, "{f:?}");
    assert_eq!(f.sha256, <[u8; 32]>::from(<sha2::Sha256 as sha2::Digest>::digest(vec![b'a'; 99_990])));
    let s = h.server.stats();
    assert_eq!((s.http_requests, s.tls_bad_records, h.client_app.tls_failures), (2, 0, 0));
    assert_eq!(s.tls_key_contexts_built, 2, "receive and transmit keys woken once");
    h.run_for(Duration::from_millis(200));
    assert_eq!(session_of(&h), (false, 0, 0, 0), "asleep again, and never used asleep");
}

/// Every TLS connection whose `rx_buf_maybe` is clear holds no reassembly buffer (so that
/// `rx_room` and `release_idle` may skip the session); the first that does not, if any.
fn tls_rx_mirror_broken(h: &SimHarness<drivers::storage::FileStorage>) -> Option<String> {
    h.server.stack.connections().find_map(|(_, k, e)| {
        let t = e.app.tls.as_ref()?;
        let s = h.server.app.held.session(&e.app)?;
        (!t.rx_buf_maybe && (s.has_rx_buf() || s.rx_space() != crate::tls::handshake::RX_BUF_LEN)).then(|| format!("port {}: buffer held unseen", k.remote_port))
    })
}

/// Keep-alive HTTPS requests of 1.5 KB (a long query) over a lossy link with the smallest
/// MTU (576), so that their records arrive in pieces that wait in the session's buffer,
/// and KeyUpdates from the client in the middle of long responses: at every step, a
/// connection that the server believes holds no reassembly buffer holds none (what `rx_room` and
/// `release_idle` rely on to leave the session untouched), every response is right, and
/// the buffers all come back once the connection is idle.
#[test]
fn a_tls_session_never_holds_a_buffer_its_connection_does_not_know_of() {
    let (_dir, storage, volume) = crate::loopback::tiny_volume();
    let link = SimConfig { loss: 0.03, reorder: 0.02, mtu: 576, seed: 7, ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, link.clone(), link, 16);
    let (server, client) = crate::loopback::test_tls_configs().unwrap();
    h.enable_tls(server, client);
    let free0 = h.server.app.rx_buffers_free();
    let check = |h: &SimHarness<_>| {
        if let Some(e) = tls_rx_mirror_broken(h) {
            panic!("{e}");
        }
    };
    let path = format!("/a.txt?pad={}", "p".repeat(1_500));
    assert!(h.start_keep_alive(true, &path, Some((0, 9_999))));
    assert!(h.run_until(Duration::from_secs(30), |h| {
        check(h);
        !h.client_app.fetches.is_empty()
    }));
    let port = h.client.connections().next().map(|(_, k, _)| k.local_port).expect("the client connection");
    for (i, (from, to)) in [(10u64, 99_999u64), (5, 5), (1_000, 60_000), (99_000, 99_999)].into_iter().enumerate() {
        assert!(h.request_again(port, &path, Some((from, to))));
        // Mid-response (its chunks held, the receive buffer given back), the client
        // updates its keys: a record arrives while the connection is busy sending.
        let midway = h.run_until(Duration::from_secs(30), |h| {
            check(h);
            h.server.stack.connections().any(|(_, _, e)| e.app.chunks.is_some())
        });
        if midway && to - from > 50_000 {
            assert!(h.client_key_update(port));
        }
        let done = h.run_until(Duration::from_secs(30), |h| {
            check(h);
            h.client_app.fetches.len() >= i + 2
        });
        assert!(done, "request {i}: {:?}", h.client_app.fetches);
    }
    for f in &h.client_app.fetches {
        assert!(f.complete && f.status == 206, "{f:?}");
        assert_eq!(f.sha256, sha(&vec![b'a'; f.body_len as usize]), "{f:?}");
    }
    assert_eq!(h.client_app.fetches.iter().map(|f| f.body_len).collect::<Vec<_>>(), [10_000, 99_990, 1, 59_001, 1_000]);
    h.run_for(Duration::from_millis(500));
    check(&h);
    assert_eq!(h.server.app.rx_buffers_free(), free0, "every receive buffer back while idle");
    assert_eq!((h.server.stats().tls_bad_records, h.client_app.tls_failures), (0, 0));
    assert!(h.server.stats().tls_records_opened >= 5 + 2, "the requests and the KeyUpdates opened");
}

/// What an idle keep-alive connection holds, printed as a breakdown (`--nocapture`), and
/// the budget it must stay within.
#[test]
fn an_idle_connection_is_small() {
    use std::mem::size_of;

    use crate::net::iface::Entry;
    use crate::net::tcp::table::ConnTable;
    use crate::net::tcp::TcpConn;
    use crate::tls::RecordSession;

    use super::{ConnTls, HttpConn};
    let slot = ConnTable::<Entry<HttpConn>>::slot_bytes();
    eprintln!(
        "TcpConn {} + HttpConn {} -> Entry {}; table slot with index {}; TLS: ConnTls {} + RecordSession {} + {} of AEAD contexts",
        size_of::<TcpConn>(),
        size_of::<HttpConn>(),
        size_of::<Entry<HttpConn>>(),
        slot,
        size_of::<ConnTls>(),
        size_of::<RecordSession>(),
        2 * crate::tls::keys::AEAD_CONTEXT_BYTES,
    );
    // The response queue (slab keys) and the TLS state are held in the slot, so that a
    // connection needs no allocation of its own (HTTP must stay under 1 KiB an idle
    // connection, HTTPS under 2 KiB with its session).
    assert!(size_of::<HttpConn>() <= 224, "HttpConn is {} bytes", size_of::<HttpConn>());
    // The slot (with its generation), its free-list place and up to four index places.
    assert!(slot <= 720, "a table slot is {slot} bytes");
    assert!(slot + crate::server::slab::Slab::<RecordSession>::entry_bytes() <= 1280, "an idle HTTPS connection (keys asleep)");
}

/// After a keep-alive request the connection holds no pooled buffer, and every buffer is
/// back in its pool; two pipelined requests in one segment are both answered.
#[test]
fn buffers_go_back_when_idle_and_pipelined_requests_are_answered() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    let free0 = h.server.app.rx_buffers_free();
    let two = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\nGET /a.txt HTTP/1.1\r\nHost: x\r\nRange: bytes=0-9\r\n\r\n";
    h.start_raw(two).expect("connect");
    h.run_for(Duration::from_secs(1));
    let s = h.server.stats();
    assert_eq!((s.http_requests, s.http_status_2xx, s.http_status_206), (2, 1, 1));
    h.run_for(Duration::from_secs(3)); // TIME-WAIT is 2 s
    assert!(h.start_keep_alive(false, "/a.txt", None));
    assert!(h.run_until_fetches(2, Duration::from_secs(10)));
    h.run_for(Duration::from_millis(100));
    assert_eq!(h.server.stack.connection_count(), 1, "keep-alive: still open");
    let (_, _, e) = h.server.stack.connections().next().expect("the connection");
    assert!(!h.server.app.holds_buffers(&e.app), "an idle connection holds no pooled buffer");
    assert_eq!(h.server.app.heap_bytes(&e.app), 0);
    assert_eq!(h.server.app.slab_bytes(&e.app), 0, "no response queued");
    assert_eq!(h.server.app.rx_buffers_free(), free0);
    assert_eq!(h.server.app.buffers_free(), 16, "storage buffers back");
    // A head in two pieces holds a buffer in between, then gives it back.
    let port = h.start_raw(b"GET /index.html HTTP/1.1\r\nHo").expect("connect");
    h.run_for(Duration::from_millis(100));
    assert_eq!(h.server.app.rx_buffers_free().0, free0.0 - 1, "a partial head holds a buffer");
    assert!(h.send_more(port, b"st: x\r\n\r\n"));
    h.run_for(Duration::from_millis(500));
    assert_eq!(h.server.stats().http_requests, 4);
    assert_eq!(h.server.app.rx_buffers_free(), free0);
}

/// The core's slab of responses has a place for every connection's first response and
/// as many again for responses queued behind others. Three connections pipelining 16
/// requests each (then closing their side) into a server sized for 16 connections want
/// 45 places behind others (the slab has 16): the rest wait in the receive buffers, and
/// every request is answered. A response dropped from a queue would leave its bytes
/// unsendable, and its connection could not close.
#[test]
fn pipelined_requests_past_the_response_slab_wait_and_are_all_answered() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::with_limits(storage, volume, SimConfig::default(), SimConfig::default(), 16, 16, 16);
    assert_eq!(h.server.app.held.responses.capacity(), 32);
    let sixteen = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n".repeat(super::MAX_PIPELINED);
    for _ in 0..3 {
        h.start_raw(&sixteen).expect("connect");
    }
    let (mut most, mut held_back) = (0, false);
    let end = h.now() + 10 * SEC;
    while h.server.stats().http_status_2xx < 48 && h.now() < end {
        h.step(true);
        let app = &h.server.app;
        most = most.max(app.held.responses.len());
        held_back |= h.server.stack.connections().any(|(_, _, e)| !e.app.rx_bytes().is_empty() && e.app.responses.len() < super::MAX_PIPELINED && !app.held.has_room(&e.app.responses));
    }
    assert!(held_back, "requests waited for room in the slab");
    assert!(most > 16 && most <= 32, "at most {most} responses queued at once");
    let s = h.server.stats();
    assert_eq!((s.http_requests, s.http_status_2xx), (48, 48));
    h.run_for(Duration::from_secs(5)); // TIME-WAIT
    assert_eq!(h.server.stack.connection_count(), 0, "every stream sent whole, then closed");
    assert_eq!((h.server.app.held.responses.len(), h.server.app.held.busy_queues), (0, 0));
}

/// 24 TLS clients connecting at once: four handshake steps run per loop iteration and
/// the rest wait in line (so frames of established connections behind them are not held
/// up), and every handshake completes with its fetch byte-exact.
#[test]
fn a_burst_of_handshakes_waits_in_line_and_every_one_completes() {
    let (_dir, mut h) = tiny_tls_harness();
    for _ in 0..24 {
        assert!(h.start_fetch_tls("/a.txt", None));
    }
    let (mut most, end) = (0, h.now() + 10 * SEC);
    while h.client_app.fetches.len() < 24 && h.now() < end {
        h.step(true);
        most = most.max(h.server.app.handshakes_queued());
    }
    assert!(most >= 24 - 2 * super::HANDSHAKE_STEPS_PER_POLL, "at most {most} handshake steps waited");
    let want = sha(&[b'a'; 100_000]);
    let fetches = &h.client_app.fetches;
    assert_eq!(fetches.iter().filter(|f| f.complete && f.status == 200 && f.sha256 == want).count(), 24, "{fetches:?}");
    assert_eq!(h.server.stats().tls_handshakes, 24);
    assert_eq!(h.server.app.handshakes_queued(), 0);
}

/// A client that comes back with the ticket of its first connection resumes its session:
/// counted apart, and its fetch is byte-exact (the tickets went out before the first
/// response's records, under the same keys).
#[test]
fn a_client_that_comes_back_resumes_its_session() {
    let (_dir, mut h) = tiny_tls_harness();
    let want = sha(&[b'a'; 100_000]);
    for n in 1..=3 {
        assert!(h.start_fetch_tls("/a.txt", None));
        let end = h.now() + 10 * SEC;
        while h.client_app.fetches.len() < n && h.now() < end {
            h.step(true);
        }
        let f = h.client_app.fetches.last().expect("fetched");
        assert!(f.complete && f.status == 200 && f.sha256 == want, "{f:?}");
    }
    let s = h.server.stats();
    assert_eq!((s.tls_handshakes, s.tls_handshakes_resumed), (3, 2));
}

/// A certificate installed while serving (the console's `tls install` on this core): new
/// handshakes present it, a client with a ticket from before still resumes (the ticket keys
/// stay), and a client that trusts only the old CA can no longer connect.
#[test]
fn a_certificate_replaced_while_serving_is_what_new_handshakes_get() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    let versions = rustls::DEFAULT_VERSIONS;
    let (certs, key, old_client) = crate::loopback::test_credentials(versions).unwrap();
    let old = crate::tls::handshake::server_config(certs, key).unwrap();
    h.enable_tls(old.clone(), old_client.clone());
    let want = sha(&[b'a'; 100_000]);
    let fetch = |h: &mut SimHarness<_>| {
        let n = h.client_app.fetches.len() + 1;
        assert!(h.start_fetch_tls("/a.txt", None));
        let end = h.now() + 10 * SEC;
        while h.client_app.fetches.len() < n && h.now() < end {
            h.step(true);
        }
        h.client_app.fetches.get(n - 1).is_some_and(|f| f.complete && f.status == 200 && f.sha256 == want)
    };
    assert!(fetch(&mut h), "the first certificate serves");
    let (certs, key, new_client) = crate::loopback::test_credentials(versions).unwrap();
    let new = crate::tls::handshake::replacing(&old, certs, key).unwrap();
    // Published where the console puts it: the next accepted connection takes it, before
    // the core's own once-a-millisecond look (`Pipeline::adopt_tls`, which also opens the
    // port when HTTPS was off).
    let slot = std::sync::Arc::new(crate::server::board::TlsSlot::default());
    h.server.app.follow_tls(slot.clone());
    slot.publish(new.clone(), crate::loopback::HTTPS_PORT);
    h.server.adopt_tls(old.clone(), crate::loopback::HTTPS_PORT); // what a core had: the slot wins at accept
    assert_eq!(h.server.stack.cfg.listen_ports.iter().filter(|&&p| p == crate::loopback::HTTPS_PORT).count(), 1);
    assert!(fetch(&mut h), "a ticket from before the change still resumes");
    assert_eq!(h.server.stats().tls_handshakes_resumed, 1);
    h.set_client_tls(new_client);
    assert!(fetch(&mut h), "a client that trusts the new CA only makes a full handshake");
    let mut stale = (*old_client).clone();
    stale.resumption = rustls::client::Resumption::disabled();
    h.set_client_tls(std::sync::Arc::new(stale));
    assert!(!fetch(&mut h), "a client that trusts the old CA only, without a ticket, is refused");
    let s = h.server.stats();
    assert_eq!((s.tls_handshakes, s.tls_handshakes_resumed), (3, 1), "{s:?}");
}

/// Clients that give up (RST) while their handshakes wait in line leave entries of
/// closed connections in the queue; at half as many as the table holds they are dropped
/// in one pass (not only when the line reaches them), and the queue never grows past
/// what it reserved at start-up.
#[test]
fn handshakes_of_closed_connections_leave_the_line() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::with_limits(storage, volume, SimConfig::default(), SimConfig::default(), 16, 32, 32);
    let (server, client) = crate::loopback::test_tls_configs().unwrap();
    h.enable_tls(server, client);
    let reserved = h.server.app.hs_queue.capacity();
    for _ in 0..32 {
        assert!(h.start_fetch_tls("/a.txt", None));
    }
    h.run_until(Duration::from_secs(10), |h| h.server.app.handshakes_queued() >= 26);
    assert!(h.server.app.handshakes_queued() >= 26, "{} waiting", h.server.app.handshakes_queued());
    // The clients of 16 in the middle of the line reset their connections: the next
    // round runs the first 4, and when the RSTs arrive 4 live ones are ahead of the 16
    // closed ones (they use up that round's steps) and more behind them.
    let line: Vec<_> = h.server.app.hs_queue.iter().copied().collect();
    let ports: Vec<u16> = line[8..24].iter().filter_map(|&id| h.server.stack.connections().find(|(i, _, _)| *i == id).map(|(_, k, _)| k.remote_port)).collect();
    assert_eq!(ports.len(), 16);
    let ids: Vec<_> = h.client.connections().filter(|(_, k, _)| ports.contains(&k.local_port)).map(|(id, _, _)| id).collect();
    for id in ids {
        if let Some(e) = h.client.get_mut(id) {
            e.tcp.abort();
        }
        h.client.wake(id);
    }
    h.step(false); // the server runs 4 steps; the clients send their RSTs
    h.step(false); // the server takes the RSTs, then runs its line
    let live = h.server.stack.connections().filter(|(_, _, e)| e.app.tls.as_ref().is_some_and(|t| t.hs_queued)).count();
    assert!(live > 0, "live connections still wait");
    assert_eq!(h.server.stack.connection_count(), 16, "the other 16 are still there");
    assert_eq!((h.server.app.handshakes_queued(), h.server.app.hs_stale), (live, 0), "only live connections wait");
    h.run_until_fetches(32, Duration::from_secs(60));
    assert_eq!(h.client_app.fetches.iter().filter(|f| f.complete && f.status == 200).count(), 16, "{:?}", h.client_app.fetches);
    assert_eq!(h.server.app.hs_queue.capacity(), reserved);
}

/// However an HTTPS connection ends (a whole fetch, a client that gives up mid-body, a
/// handshake and then nothing until the header timeout, plain HTTP to the HTTPS port),
/// its handshake, session and queued responses go back to the slabs.
#[test]
fn connections_that_end_any_way_leave_the_slabs_empty() {
    let (_dir, mut h) = tiny_tls_harness();
    h.server.app.header_timeout = 2 * SEC;
    for _ in 0..4 {
        assert!(h.start_fetch_tls("/a.txt", None));
    }
    for (tag, how) in [(8, crate::loopback::Abort::Rst), (9, crate::loopback::Abort::Fin)] {
        let give_up = crate::loopback::FetchRequest { path: "/a.txt".into(), range: None, tls: true, tag, abort: Some((5_000, how)) };
        assert!(h.open_fetch(&give_up));
    }
    assert!(h.start_idle(true));
    h.start_raw_to(crate::loopback::HTTPS_PORT, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("connect");
    h.run_for(Duration::from_millis(50));
    let held = |h: &SimHarness<_>| (h.server.app.held.handshakes.len(), h.server.app.held.sessions.len(), h.server.app.held.responses.len(), h.server.app.held.busy_queues);
    assert!(held(&h).0 + held(&h).1 > 0, "held while the connections are open");
    h.run_for(Duration::from_secs(120));
    assert_eq!(h.server.stack.connection_count(), 0);
    assert!(h.server.stats().tls_handshakes >= 6 && h.server.stats().tls_handshake_failures >= 1);
    assert_eq!(held(&h), (0, 0, 0, 0));
}

/// With every receive buffer held by slow heads, a new request waits (zero window,
/// counted) instead of being dropped or allocating, and is answered once a buffer frees.
#[test]
fn an_empty_receive_pool_pauses_reading_until_a_buffer_frees() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    // No header timeout: no partial head is ever given up, the waiter waits.
    h.server.app.header_timeout = 0;
    let (free, _) = h.server.app.rx_buffers_free();
    let ports: Vec<u16> = (0..free).map(|_| h.start_raw(b"GET /index.html HTTP/1.1\r\nHost: x\r\nX: 1").expect("connect")).collect();
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.server.app.rx_buffers_free().0, 0, "every buffer held by a partial head");
    assert!(h.start_fetch("/index.html", None));
    h.run_for(Duration::from_secs(3));
    assert!(h.client_app.fetches.is_empty(), "nothing read while no buffer is free");
    assert!(h.server.stats().http_rx_buffer_waits >= 1, "the wait is counted");
    assert_eq!(h.server.stats().http_head_evictions, 0);
    // One slow head completes: its buffer goes to the waiting connection.
    assert!(h.send_more(ports[0], b"\r\n\r\n"));
    assert!(h.run_until_fetches(2, Duration::from_secs(30)));
    assert!(h.client_app.fetches.iter().all(|f| f.complete && f.status == 200), "{:?}", h.client_app.fetches);
}

/// Slowloris against the receive pool: partial heads hold every buffer; a new request
/// waits about [`HEAD_EVICT_AFTER`], then the oldest partial head gets its 408 early and
/// its buffer serves the request. The rest time out as usual; every buffer comes back.
#[test]
fn the_oldest_partial_head_gives_its_buffer_to_a_waiting_request() {
    let (_dir, storage, volume) = tiny_volume();
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    h.server.app.header_timeout = 30 * SEC;
    let (free, _) = h.server.app.rx_buffers_free();
    for _ in 0..free {
        h.start_raw(b"GET /index.html HTTP/1.1\r\nHost: x\r\nX: 1").expect("connect");
    }
    h.run_for(Duration::from_millis(200));
    assert_eq!(h.server.app.rx_buffers_free().0, 0, "every buffer held by a partial head");
    assert!(h.start_fetch("/index.html", None));
    h.run_for(Duration::from_millis(500));
    assert!(h.client_app.fetches.iter().all(|f| !f.complete), "not served before the eviction age");
    // The evicted head's 408 and the waiting request's answer.
    assert!(h.run_until_fetches(2, Duration::from_secs(3)), "served within a few seconds, not the 30 s timeout");
    let f = h.client_app.fetches.iter().find(|f| f.status == 200).unwrap_or_else(|| panic!("the fetch: {:?} {:?}", h.client_app.fetches, h.server.stats()));
    assert!(f.complete, "{f:?}");
    let s = h.server.stats();
    assert!(s.http_head_evictions >= 1 && s.http_status_408 >= 1 && s.http_header_timeouts >= 1, "{s:?}");
    h.run_for(Duration::from_secs(35));
    assert_eq!(h.server.app.rx_buffers_free().0, free);
    assert_eq!(h.server.stack.connection_count(), 0);
}

/// A volume with one patterned file of `len` bytes at `/v.ts` (every offset differs, so
/// a record opened at the wrong place shows).
fn patterned_volume(len: usize) -> (tempfile::TempDir, drivers::storage::FileStorage, crate::volume::Volume, Vec<u8>) {
    patterned_volume_in(len, false)
}

/// [`patterned_volume`], on /dev/shm (mapped) when `in_memory`.
fn patterned_volume_in(len: usize, in_memory: bool) -> (tempfile::TempDir, drivers::storage::FileStorage, crate::volume::Volume, Vec<u8>) {
    let dir = if in_memory { tempfile::tempdir_in("/dev/shm").expect("a tmpfs at /dev/shm") } else { tempfile::tempdir().unwrap() };
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(tree.join("v.ts"), &data).unwrap();
    let vol = dir.path().join("media.vol");
    crate::volume::pack(&tree, &vol).unwrap();
    let mut storage = drivers::storage::FileStorage::open(&vol).unwrap();
    assert_eq!(storage.is_mapped(), in_memory);
    let volume = crate::volume::load(&mut storage).unwrap();
    (dir, storage, volume, data)
}

/// Emulated TLS over a lossy, reordering link: whole file and ranges (unaligned, inside
/// one record, the last bytes) arrive as records that open with the dummy key to the
/// volume's bytes, byte-exact; Content-Length is the framed length (the fetch completes
/// on exactly that many bytes). Timeouts released chunks, so records were read and sealed
/// again: a re-seal that differed would not open. From a volume on disk (read, then sealed
/// in place) and from one on tmpfs (sealed out of its mapping).
#[test]
fn emulated_tls_bodies_open_to_the_volume_bytes_over_loss() {
    emulated_tls_over_loss(false);
    emulated_tls_over_loss(true);
}

fn emulated_tls_over_loss(in_memory: bool) {
    use sha2::{Digest, Sha256};
    const LEN: usize = 1_500_000;
    let (_dir, storage, volume, data) = patterned_volume_in(LEN, in_memory);
    let lossy = |seed| SimConfig { seed, loss: 0.05, reorder: 0.02, duplicate: 0.01, delay: Duration::from_millis(1), ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, lossy(11), lossy(12), 16);
    h.server.app.enable_tls_emulation().unwrap();
    let len = LEN as u64;
    let ranges = [None, Some((1000, 700_000)), Some((70_000, 70_000)), Some((len - 10, len - 1)), Some((16_384, 3 * 16_384 - 1))];
    for r in ranges {
        assert!(h.start_fetch("/v.ts", r));
    }
    assert!(h.run_until_fetches(ranges.len(), Duration::from_secs(600)), "fetches did not finish");
    let mut records = 0;
    for r in ranges {
        let (a, b) = r.unwrap_or((0, len - 1));
        let want: [u8; 32] = Sha256::digest(&data[a as usize..=b as usize]).into();
        let f = h.client_app.fetches.iter().find(|f| f.sha256 == want).unwrap_or_else(|| panic!("no fetch of {r:?} matches the volume: {:?}", h.client_app.fetches));
        assert!(f.complete && f.emulated, "{r:?}: {f:?}");
        assert_eq!((f.status, f.body_len), (if r.is_some() { 206 } else { 200 }, b - a + 1));
        records += crate::tls::emulation::body_layout(a, b - a + 1).unwrap().record_count();
    }
    assert_eq!(h.client_app.tls_failures, 0);
    let s = h.server.stats();
    eprintln!("records {records}, sealed {}, timeouts {}, storage reads {}", s.tls_records_sealed, s.tcp_rto_timeouts, s.storage_reads);
    assert!(s.tcp_rto_timeouts > 0, "no timeout released a chunk: {s:?}");
    assert!(s.tls_records_sealed > records, "{} sealed for {records} records: nothing sealed again", s.tls_records_sealed);
    assert_eq!((s.tls_handshakes, s.tls_records_opened), (0, 0), "requests are plaintext");
    let mapped = drivers::storage::Storage::counters(&h.server.app.storage).mapped_reads;
    assert_eq!(mapped, if in_memory { s.storage_reads } else { 0 }, "chunks sealed out of the mapping");
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.stack.connection_count(), 0);
    assert_eq!(h.server.app.buffers_free(), 16, "every buffer back");
}

/// `available` answers the asks that follow a walk from the hint the walk left (where the
/// chunk's ready bytes end), and `payload` walks for the bytes. Over a lossy, reordering link
/// with segmentation offload (segments of up to four records), plain and TLS 1.3, whole file
/// and ranges: every body byte-exact, and no hint promised what was not there (no segment
/// taken back). Then with every hint made to promise everything before each round: the stack
/// takes back each segment `payload` cannot fill, asks again from a fresh walk, and the bodies
/// are still byte-exact.
#[test]
fn a_ready_hint_promises_only_what_is_there_and_a_false_one_costs_a_second_ask() {
    for tls in [false, true] {
        for lie in [false, true] {
            ready_hints_over_loss(tls, lie);
        }
    }
}

fn ready_hints_over_loss(tls: bool, lie: bool) {
    use sha2::{Digest, Sha256};
    const LEN: usize = 3 * super::CHUNK + 70_001;
    let (_dir, storage, volume, data) = patterned_volume(LEN);
    let lossy = |seed, tso| SimConfig { seed, tso, loss: 0.02, reorder: 0.02, duplicate: 0.01, delay: Duration::from_millis(1), ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, lossy(21, true), lossy(22, false), 16);
    h.client.cfg.tcp.rcv_window_shift = 5;
    h.client_app.rx_room = 2 * super::CHUNK;
    if tls {
        let (server, client) = crate::loopback::test_tls_configs().unwrap();
        h.enable_tls(server, client);
    }
    let len = LEN as u64;
    let ranges = [None, Some((1_000, 1_200_000)), Some((16_383, 16_385)), Some((len - 70_000, len - 1))];
    for (i, r) in ranges.iter().enumerate() {
        let req = crate::loopback::FetchRequest { path: "/v.ts".into(), range: *r, tls, tag: i as u64, abort: None };
        assert!(h.open_fetch(&req));
    }
    let end = h.now() + Duration::from_secs(600).as_nanos() as u64;
    while h.client_app.fetches.len() < ranges.len() && h.now() < end {
        if lie {
            let ids: Vec<_> = h.server.stack.connections().map(|(id, _, _)| id).collect();
            for id in ids {
                if let Some(e) = h.server.stack.get_mut(id) {
                    e.app.ready_hint = super::ReadyHint::new(u64::MAX, false);
                }
            }
        }
        h.step(true);
    }
    assert_eq!(h.client_app.fetches.len(), ranges.len(), "tls {tls}, lie {lie}: transfers did not finish");
    for r in ranges {
        let (a, b) = r.unwrap_or((0, len - 1));
        let want: [u8; 32] = Sha256::digest(&data[a as usize..=b as usize]).into();
        let f = h.client_app.fetches.iter().find(|f| f.sha256 == want);
        assert!(f.is_some_and(|f| f.complete && f.body_len == b - a + 1), "tls {tls}, lie {lie}, {r:?}: {:?}", h.client_app.fetches);
    }
    let s = h.server.stats();
    assert!(s.tcp_retransmits > 0, "the link lost nothing: {s:?}");
    if lie {
        assert!(s.tcp_tx_payload_short > 0, "tls {tls}: no false promise was taken back");
    } else {
        assert_eq!(s.tcp_tx_payload_short, 0, "tls {tls}: a hint promised bytes that were not there");
    }
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.app.buffers_free(), 16, "every buffer back");
}

/// Chunks go back to the pool once sent, not once acknowledged: over a link with a
/// round-trip time, 32 transfers keep more bytes in flight than 2 buffers hold, and
/// every body is byte-exact (a loss would be read again, as sim_loss checks). The
/// clients announce windows of two chunks: with smaller ones a connection cannot send its
/// read-ahead chunk before the ACK and holds it and its unsent tail, and the bytes in flight
/// come out near the pool's (with 256 KiB chunks and 64 KiB windows a tenth above it, once
/// under load below it; with 512 KiB chunks and windows of one, just under it). Released
/// at the ACK, the pool would bound them at two chunks; released once sent, they reach
/// about three (1.47 MB with 512 KiB chunks).
#[test]
fn buffers_go_back_once_sent_so_the_pool_does_not_bound_the_bytes_in_flight() {
    use sha2::{Digest, Sha256};
    // About four chunks (1,000,000 bytes with 256 KiB chunks).
    const LEN: usize = 4 * super::CHUNK - 48_576;
    const BUFFERS: usize = 2;
    const FETCHES: usize = 32;
    let (_dir, storage, volume, data) = patterned_volume(LEN);
    let far = SimConfig { delay: Duration::from_millis(5), ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, far.clone(), far, BUFFERS);
    h.client.cfg.tcp.rcv_window_shift = 5;
    h.client_app.rx_room = 2 * super::CHUNK;
    for _ in 0..FETCHES {
        assert!(h.start_fetch("/v.ts", None));
    }
    let mut most_in_flight = 0;
    let end = h.now() + Duration::from_secs(60).as_nanos() as u64;
    while h.client_app.fetches.len() < FETCHES && h.now() < end {
        h.step(true);
        let in_flight: u64 = h.server.stack.connections().map(|(_, _, e)| e.tcp.sent_offset() - e.tcp.acked_offset()).sum();
        most_in_flight = most_in_flight.max(in_flight);
    }
    let want: [u8; 32] = Sha256::digest(&data).into();
    assert_eq!(h.client_app.fetches.len(), FETCHES, "transfers did not finish");
    assert!(h.client_app.fetches.iter().all(|f| f.complete && f.status == 200 && f.sha256 == want), "{:?}", h.client_app.fetches);
    assert!(most_in_flight > (BUFFERS * super::CHUNK) as u64, "at most {most_in_flight} bytes in flight: the pool bounds them");
    h.run_for(Duration::from_secs(5));
    assert_eq!(h.server.app.buffers_free(), BUFFERS, "every buffer back");
    // 32 transfers on 2 buffers: connections waited their turn, and the console says so.
    assert!(h.server.stats().storage_buffer_waits > 0, "waits counted");
}

/// Storage buffers of the pool the slow-reader tests share, and how many slow clients.
const SLOW_BUFFERS: usize = 4;
const SLOW_CLIENTS: u64 = 4;
const SLOW_LEN: usize = 4 * super::CHUNK;

fn slow_fetch(tls: bool, tag: u64) -> crate::loopback::FetchRequest {
    crate::loopback::FetchRequest { path: "/v.ts".into(), range: None, tls, tag, abort: None }
}

/// A pool of [`SLOW_BUFFERS`] and [`SLOW_CLIENTS`] clients (tags 1..) fetching a four-chunk
/// object over a 1 ms link, whose windows (`rx_room`, scaled by `shift`) become `window`
/// bytes once half a chunk each arrived; run until they got there. The volume's directory,
/// the harness and the object's SHA-256.
fn slow_readers(tls: bool, shift: u8, rx_room: usize, window: usize) -> (tempfile::TempDir, SimHarness<drivers::storage::FileStorage>, [u8; 32]) {
    use sha2::{Digest, Sha256};
    let after = super::CHUNK as u64 / 2;
    let (dir, storage, volume, data) = patterned_volume(SLOW_LEN);
    let link = SimConfig { delay: Duration::from_millis(1), ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, link.clone(), link, SLOW_BUFFERS);
    if tls {
        let (server, client) = crate::loopback::test_tls_configs().unwrap();
        h.enable_tls(server, client);
    }
    h.client.cfg.tcp.rcv_window_shift = shift;
    h.client_app.rx_room = rx_room;
    for tag in 1..=SLOW_CLIENTS {
        h.client_app.stalling.push((tag, after, window));
        assert!(h.open_fetch(&slow_fetch(tls, tag)));
    }
    assert!(h.run_until(Duration::from_secs(10), |h| h.client_app.body_bytes >= SLOW_CLIENTS * after), "the slow clients got going");
    (dir, h, Sha256::digest(&data).into())
}

/// While the slow clients hold on, another client is served at once (the idle timeout,
/// 60 s, is far off).
fn a_fifth_client_is_served(h: &mut SimHarness<drivers::storage::FileStorage>, tls: bool, want: [u8; 32]) {
    assert!(h.open_fetch(&slow_fetch(tls, 99)));
    assert!(h.run_until_fetches(1, Duration::from_secs(2)), "the fifth client waited for the slow ones");
    assert!(h.client_app.fetches[0].tag == 99 && h.client_app.fetches[0].complete && h.client_app.fetches[0].sha256 == want, "{:?}", h.client_app.fetches);
}

/// The slow clients read normally again: their transfers finish byte-exact (what was given
/// back read and, over TLS, sealed again), and every buffer comes back.
fn slow_readers_finish(h: &mut SimHarness<drivers::storage::FileStorage>, want: [u8; 32]) {
    h.client_app.stalling.clear();
    assert!(h.run_until_fetches(1 + SLOW_CLIENTS as usize, Duration::from_secs(30)), "the slow transfers did not finish");
    assert!(h.client_app.fetches.iter().all(|f| f.complete && f.status == 200 && f.sha256 == want), "{:?}", h.client_app.fetches);
    h.run_for(Duration::from_secs(1));
    assert_eq!(h.server.app.buffers_free(), SLOW_BUFFERS, "every buffer back");
    // Buffers given back before their bytes were sent took the ready hints with them.
    assert_eq!(h.server.stats().tcp_tx_payload_short, 0, "a hint promised bytes given back");
}

/// Clients that stop reading mid-body (a zero window, still closed at the first probe)
/// give the storage buffers read for them back: four of them could hold twice a pool of
/// four buffers, yet a fifth client is served at once while they stall, and once they read
/// again their transfers finish byte-exact (the bytes read and, over TLS, sealed again).
fn stalled_readers_leave_the_pool_to_others(tls: bool) {
    let (_dir, mut h, want) = slow_readers(tls, 5, super::CHUNK, 0);
    // A pause shorter than the first probe keeps what was read (the window may open again).
    h.run_for(Duration::from_millis(50));
    assert!(h.server.app.buffers_free() < SLOW_BUFFERS, "a pause of 50 ms gave the buffers up");
    assert_eq!(h.server.stats().storage_window_releases, 0);
    // Past the first probe (an RTO, 200 ms at least), the stalled connections hold nothing.
    h.run_for(Duration::from_millis(1000));
    assert!(h.client_app.fetches.is_empty(), "none finished: {:?}", h.client_app.fetches);
    assert_eq!(h.server.stack.connection_count(), SLOW_CLIENTS as usize, "the stalled connections are open");
    assert_eq!(h.server.app.buffers_free(), SLOW_BUFFERS, "zero-window clients hold no storage buffer");
    let released = h.server.stats().storage_window_releases;
    assert!(released > 0, "the buffers given back are counted");
    a_fifth_client_is_served(&mut h, tls, want);
    // Stalled for longer: each zero-window probe reads its byte's record (or blocks), and
    // gives it back at the answer; the probes back off, so the reads are few and small.
    let (reads, read_bytes) = (h.server.stats().storage_reads, h.server.stats().storage_read_bytes);
    h.run_for(Duration::from_secs(5));
    let (probe_reads, probe_bytes) = (h.server.stats().storage_reads - reads, h.server.stats().storage_read_bytes - read_bytes);
    assert!(probe_reads > 0 && probe_reads <= 10 * SLOW_CLIENTS, "{probe_reads} reads in 5 s of zero windows");
    assert!(probe_bytes <= probe_reads * 2 * crate::tls::layout::RECORD_PLAINTEXT, "{probe_bytes} bytes in {probe_reads} reads: more than a probe's byte needs");
    assert_eq!(h.server.app.buffers_free(), SLOW_BUFFERS, "nothing held between probes");
    assert_eq!(h.server.stack.connection_count(), SLOW_CLIENTS as usize, "the stalled connections are open");
    // They read again: zero-window probes find the window open, and the rest is read again.
    slow_readers_finish(&mut h, want);
}

/// Clients that read a few bytes at a time (a 100-byte window, never zero: the idle timeout
/// does not end them, as they make progress) hold no storage buffer between their ACKs:
/// each turn reads the record their window reaches into and gives it back once sent. Four
/// of them on a pool of four buffers leave it free, a fifth client is served at once, and
/// once they read normally again their transfers finish byte-exact.
fn trickling_readers_leave_the_pool_to_others(tls: bool) {
    let (_dir, mut h, want) = slow_readers(tls, 0, 65535, 100);
    let acked = |h: &SimHarness<_>| h.server.stack.connections().map(|(_, _, e)| e.tcp.acked_offset()).sum::<u64>();
    let (bytes, reads) = (acked(&h), h.server.stats().storage_reads);
    h.run_for(Duration::from_millis(500));
    assert!(acked(&h) > bytes + 4 * 100, "they still get bytes");
    assert!(h.client_app.fetches.is_empty(), "none finished: {:?}", h.client_app.fetches);
    assert_eq!(h.server.app.buffers_free(), SLOW_BUFFERS, "trickling clients hold no storage buffer between turns");
    assert!(h.server.stats().storage_window_releases > 0);
    let turns = h.server.stats().storage_reads - reads;
    assert!(turns > 0 && h.server.stats().storage_read_bytes <= (SLOW_LEN as u64) * 2 + turns * 2 * crate::tls::layout::RECORD_PLAINTEXT, "reads of more than the records a window reaches");
    a_fifth_client_is_served(&mut h, tls, want);
    slow_readers_finish(&mut h, want);
}

#[test]
fn trickling_readers_leave_the_pool_to_others_over_http() {
    trickling_readers_leave_the_pool_to_others(false);
}

#[test]
fn trickling_readers_leave_the_pool_to_others_over_https() {
    trickling_readers_leave_the_pool_to_others(true);
}

#[test]
fn stalled_readers_leave_the_pool_to_others_over_http() {
    stalled_readers_leave_the_pool_to_others(false);
}

#[test]
fn stalled_readers_leave_the_pool_to_others_over_https() {
    stalled_readers_leave_the_pool_to_others(true);
}

/// The client acknowledges each 64 KiB TSO frame with one ACK, as a receiver with GRO
/// does; slow start still doubles the window per round trip, so 8 MB over a 20 ms round
/// trip (a 1 MiB receive window) arrive in about 15 round trips. Counting two segments per
/// ACK (RFC 3465's limit) took 72: the window grew by a few percent per round trip.
#[test]
fn stretch_acks_of_tso_frames_let_slow_start_double_the_window() {
    use sha2::{Digest, Sha256};
    const LEN: usize = 8_000_000;
    let (_dir, storage, volume, data) = patterned_volume(LEN);
    let far = SimConfig { delay: Duration::from_millis(10), ..SimConfig::default() };
    let to_client = SimConfig { tso: true, queue_frames: 1024, ..far.clone() };
    let mut h = SimHarness::new(storage, volume, to_client, far, 16);
    h.client.cfg.tcp.rcv_window_shift = 5;
    h.client_app.rx_room = 1 << 20;
    let start = h.now();
    assert!(h.start_fetch("/v.ts", None));
    assert!(h.run_until_fetches(1, Duration::from_secs(60)));
    let f = &h.client_app.fetches[0];
    assert!(f.complete && f.status == 200 && f.sha256 == <[u8; 32]>::from(Sha256::digest(&data)), "{f:?}");
    let round_trips = (h.now() - start) / (20 * MS);
    assert!(round_trips <= 25, "{round_trips} round trips for 8 MB");
}

/// One fetch of a 1 MB object over a 5 ms link, well into its body (the head is held in
/// memory, not read again; the first chunk sent whole, so its buffer went back, and not yet
/// acknowledged whole), when everything the server sends starts being lost for 150 ms: its
/// RTO will fire.
fn cut_off_mid_transfer() -> (tempfile::TempDir, SimHarness<drivers::storage::FileStorage>, Vec<u8>) {
    let (dir, storage, volume, data) = patterned_volume(1_000_000);
    let far = SimConfig { delay: Duration::from_millis(5), ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, far.clone(), far, 16);
    assert!(h.start_fetch("/v.ts", None));
    let offsets = |h: &SimHarness<drivers::storage::FileStorage>| h.server.stack.connections().map(|(_, _, e)| (e.tcp.sent_offset(), e.tcp.acked_offset())).next().unwrap_or_default();
    // The head is a few hundred bytes: past CHUNK + 4096 the first chunk's bytes are all sent.
    while offsets(&h).0 <= super::CHUNK as u64 + 4096 {
        h.step(true);
    }
    assert!(offsets(&h).1 < super::CHUNK as u64, "the first chunk was acknowledged whole: {:?}", offsets(&h));
    h.server.nic.partition_until(Duration::from_nanos(h.now()) + Duration::from_millis(150));
    (dir, h, data)
}

/// The one server connection's (RTO timeouts, retransmissions).
fn rto_counters(h: &SimHarness<drivers::storage::FileStorage>) -> (u64, u64) {
    h.server.stack.connections().map(|(_, _, e)| (e.tcp.counters.rto_timeouts, e.tcp.counters.retransmits)).next().unwrap()
}

/// Sent chunks went back when they were sent, so the retransmission after an RTO reads
/// its bytes again: the poll that started that read says it is busy, and the
/// retransmission goes out on the next turn, at the same instant, not after the loop
/// waited for the NIC.
#[test]
fn a_retransmission_that_reads_again_goes_out_without_waiting() {
    let (_dir, mut h, _data) = cut_off_mid_transfer();
    let counters = rto_counters;
    let end = h.now() + Duration::from_secs(10).as_nanos() as u64;
    let mut fired_at = h.now();
    while counters(&h).0 == 0 && h.now() < end {
        fired_at = h.now();
        h.step(true);
    }
    let (rtos, retransmits) = counters(&h);
    assert_eq!((rtos, retransmits), (1, 0), "the RTO fired, its retransmission waits for a read");
    while counters(&h).1 == retransmits && h.now() < end {
        h.step(true);
    }
    assert!(counters(&h).1 > retransmits, "retransmitted");
    assert_eq!(h.now(), fired_at, "the retransmission waited {} ns after the RTO", h.now() - fired_at);
}

/// A timeout reads again only what it resends: the one chunk the retransmission needs,
/// not the next one too (after a timeout most of what follows has usually arrived, as
/// the ACK will say), and a chunk read ahead of the lost bytes stays for when sending
/// goes on. (Before, the RTO dropped ready chunks and the retransmission read ahead: in
/// 2,000 seeds of `sim_seeds` the server read 10.1 GB for 1.47 GB of bodies; now 5.8.)
#[test]
fn a_timeout_reads_again_only_what_it_resends() {
    let (_dir, mut h, data) = cut_off_mid_transfer();
    let counters = rto_counters;
    let end = h.now() + Duration::from_secs(10).as_nanos() as u64;
    let mut reads = h.server.app.stats.storage_reads;
    while counters(&h).0 == 0 && h.now() < end {
        reads = h.server.app.stats.storage_reads;
        h.step(true);
    }
    assert_eq!(counters(&h).0, 1, "the RTO fired");
    while counters(&h).1 == 0 && h.now() < end {
        h.step(true);
    }
    assert!(counters(&h).1 > 0, "retransmitted");
    assert_eq!(h.server.app.stats.storage_reads - reads, 1, "one chunk read again for the retransmission, none ahead");
    // And the transfer completes byte-exact.
    assert!(h.run_until_fetches(1, Duration::from_secs(30)));
    let f = &h.client_app.fetches[0];
    assert!(f.complete && f.sha256 == sha(&data), "{f:?}");
}

/// A range reads only the blocks that hold its bytes: from the block of its first byte
/// in a chunk to the block of its last, not the whole chunk (over HTTP and HTTPS,
/// whose first and last records start and end at the range's edges too).
#[test]
fn a_range_reads_only_the_blocks_that_hold_it() {
    let (_dir, storage, volume, data) = patterned_volume(300_000);
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    let (server, client) = crate::loopback::test_tls_configs().unwrap();
    h.enable_tls(server, client);
    let cases: [(bool, usize, usize, u64, &str); 4] = [
        (false, 10, 70_000, 73_728, "blocks 0 to 17: 70,001 bytes in 18 blocks"),
        (true, 131_072, 140_000, 12_288, "8,929 bytes from block 32 in three blocks"),
        (false, 205_000, 210_000, 8_192, "from block 50 (204,800) to block 51"),
        (true, 225_000, 299_999, 81_920, "from block 54 (221,184) to the object's end (300,000) in 20 blocks"),
    ];
    for (i, &(tls, lo, hi, read, why)) in cases.iter().enumerate() {
        let before = h.server.app.stats.storage_read_bytes;
        let range = Some((lo as u64, hi as u64));
        assert!(if tls { h.start_fetch_tls("/v.ts", range) } else { h.start_fetch("/v.ts", range) });
        assert!(h.run_until_fetches(i + 1, Duration::from_secs(30)));
        assert_eq!(h.server.app.stats.storage_read_bytes - before, read, "{why}");
        let f = &h.client_app.fetches[i];
        assert!(f.complete && f.status == 206 && f.sha256 == sha(&data[lo..=hi]), "{f:?}");
    }
}

/// With emulation on, HTTPS is real TLS as before, and a 404 is plain text.
#[test]
fn emulation_leaves_https_and_errors_alone() {
    let (_dir, storage, volume, data) = patterned_volume(100_000);
    let mut h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), 16);
    h.server.app.enable_tls_emulation().unwrap();
    let (server, client) = crate::loopback::test_tls_configs().unwrap();
    h.enable_tls(server, client);
    assert!(h.start_fetch_tls("/v.ts", Some((5, 99_999))));
    assert!(h.start_fetch("/missing", None));
    assert!(h.run_until_fetches(2, Duration::from_secs(30)));
    let tls = h.client_app.fetches.iter().find(|f| f.status == 206).expect("the HTTPS fetch");
    let want: [u8; 32] = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&data[5..])).into();
    assert!(tls.complete && !tls.emulated && tls.body_len == 99_995 && tls.sha256 == want, "{tls:?}");
    let missing = h.client_app.fetches.iter().find(|f| f.status == 404).expect("the 404");
    assert!(missing.complete && !missing.emulated, "{missing:?}");
}

/// The receive pool holds a quarter of the storage pool's bytes: with the default 8
/// storage buffers a core, 64 slow request heads each keep a buffer (the e2e eviction check
/// holds 64 idle connections with a partial head each), as with 64 buffers of 64 KiB before.
#[test]
fn the_receive_pool_is_a_quarter_of_the_storage_pool() {
    for (buffers, rx) in [(4, 32), (crate::server::BUFFERS, 64), (crate::server::DPDK_BUFFERS, 256)] {
        let (_dir, storage, volume, _) = patterned_volume(10_000);
        let h = SimHarness::new(storage, volume, SimConfig::default(), SimConfig::default(), buffers);
        assert_eq!(h.server.app.rx_buffers_free().0, rx, "{buffers} storage buffers");
    }
}

/// What `available` counts (`ready_len`, stepping over whole records) is what `payload`
/// walks part by part (`walk_ready`): at offsets all over every stream, with limits around
/// part and record lengths, while transfers are under way (ranges not on a record boundary
/// among them) over TLS 1.3, TLS 1.2 (no inner content type) and emulated TLS.
#[test]
fn counting_what_is_ready_agrees_with_walking_it() {
    const LEN: usize = 1_500_000;
    let tls13: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let tls12: &[&'static rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for (versions, emulation) in [(tls13, false), (tls12, false), (tls13, true)] {
        let (_dir, storage, volume, _) = patterned_volume(LEN);
        let far = SimConfig { delay: Duration::from_millis(2), ..SimConfig::default() };
        let mut h = SimHarness::new(storage, volume, far.clone(), far, 16);
        let ranges = [None, Some((1000, 700_000)), Some((16_384, 3 * 16_384 - 1))];
        if emulation {
            h.server.app.enable_tls_emulation().unwrap();
            for r in ranges {
                assert!(h.start_fetch("/v.ts", r));
            }
        } else {
            let (server, client) = crate::loopback::test_tls_configs_for(versions).unwrap();
            h.enable_tls(server, client);
            for r in ranges {
                assert!(h.start_fetch_tls("/v.ts", r));
            }
        }
        let limits = [1, 4, 5, 6, 17, 18, 1000, 16_384, 16_401, 16_406, 16_423, 40_000, 65_536, 1 << 20];
        let (mut compared, mut skipped_to_the_limit) = (0u64, 0u64);
        let mut round = 0u64;
        while h.client_app.fetches.len() < ranges.len() {
            assert!(h.now() < 60 * SEC, "fetches did not finish");
            h.step(true);
            round += 1;
            if !round.is_multiple_of(7) {
                continue;
            }
            let held = &h.server.app.held;
            for (_, _, e) in h.server.stack.connections() {
                let c = &e.app;
                let from = e.tcp.acked_offset();
                for off in (from..c.stream_len).step_by(3_989).chain([c.stream_len]) {
                    for max in limits {
                        let walked = super::walk_ready(held, c, off, max, |_| {});
                        let counted = super::ready_len(held, c, off, max);
                        assert_eq!(walked, counted, "offset {off}, at most {max} bytes ({versions:?}, emulation {emulation})");
                        compared += 1;
                        skipped_to_the_limit += u64::from(counted.0 == max && max > 2 * 16_384);
                    }
                }
            }
        }
        assert!(compared > 10_000 && skipped_to_the_limit > 100, "compared {compared}, {skipped_to_the_limit} reached a limit past two records");
        let s = h.server.stats();
        assert_eq!(s.tls_handshakes, u64::from(!emulation) * ranges.len() as u64);
    }
}
