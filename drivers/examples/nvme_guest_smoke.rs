//! The NVMe driver against a real (QEMU-emulated) controller, run as part of the guest that
//! `ci/nvme-guest-smoke` boots: find the controller, bind it to vfio-pci, bring it up through
//! the IOMMU, read the drive and check every byte, then benchmark reads at queue depths 1..64.
//!
//! On the host, `nvme_guest_smoke make-image <path> <bytes>` writes the drive image whose
//! contents the guest run checks. In the guest, `nvme_guest_smoke guest [seconds per depth]`,
//! then (with the drive handed to the kernel's nvme driver) `nvme_guest_smoke kernel-bench
//! <block device> [seconds per depth]`: the same reads through the kernel with O_DIRECT, one
//! thread per outstanding read, for the side-by-side figure; then the very loop the NVMe
//! driver ran (`bench::run`) over the appliance's file backend on the same block device
//! (O_DIRECT `pread`, synchronous: one read at a time whatever the depth asked), which is
//! what `serve --media /dev/nvme0n1` gets from the kernel.
use std::io::Write;
use std::time::Duration;

use drivers::storage::bench;
use drivers::storage::nvme::{self, vfio, NvmeConfig};
use drivers::storage::{Completion, FileStorage, Storage, StorageError};

/// The byte the drive image holds at `pos`.
fn expected(pos: u64) -> u8 {
    ((pos >> 12) as u8).wrapping_mul(31) ^ (pos as u8) ^ ((pos >> 20) as u8).wrapping_mul(5)
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[{}] {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

fn make_image(path: &str, bytes: u64) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 16];
    for start in (0..bytes).step_by(block.len()) {
        for (i, b) in block.iter_mut().enumerate() {
            *b = expected(start + i as u64);
        }
        let n = block.len().min((bytes - start) as usize);
        out.write_all(&block[..n])?;
    }
    out.flush()
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

/// Reads of many sizes at many offsets, several in flight, every byte checked.
fn verify_reads(q: &mut dyn Storage, max_transfer: usize) -> Result<u64, String> {
    let max_transfer = max_transfer.min(512 * 1024);
    let pool = q.dma_pool(1 << 20, 16).map_err(|e| format!("dma_pool: {e}"))?;
    println!("smoke: 16 MiB buffer pool mapped, {}", hugepages());
    // Up to 1 MiB: reads above the controller's transfer limit are split into commands.
    let sizes = [4096, 8192, 12288, 65536, 131072, 262144, max_transfer + 4096, 1 << 20];
    let blocks = q.capacity() / 4096;
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut pending = std::collections::HashMap::new();
    let mut done: Vec<Completion> = Vec::with_capacity(32);
    let mut checked = 0u64;
    let total = 400u64;
    let mut next = 0u64;
    while next < total || q.in_flight() > 0 {
        while next < total && q.in_flight() < 16 {
            let len = sizes[(rand() % sizes.len() as u64) as usize];
            // The last read ends exactly at the end of the namespace.
            let offset = if next == total - 1 {
                q.capacity() - len as u64
            } else {
                (rand() % (blocks - len as u64 / 4096)) * 4096
            };
            let buf = pool.alloc().ok_or("pool exhausted")?;
            q.submit_read(next, offset, len, buf).map_err(|(e, _)| format!("submit: {e}"))?;
            pending.insert(next, (offset, len));
            next += 1;
        }
        q.poll(&mut done);
        for c in done.drain(..) {
            c.result.clone().map_err(|e| format!("read {}: {e}", c.tag))?;
            let (offset, len) = pending.remove(&c.tag).ok_or("unknown tag")?;
            for (i, b) in c.buf.as_slice()[..len].iter().enumerate() {
                let pos = offset + i as u64;
                check(*b == expected(pos), || format!("byte at {pos} is {b:#x}, want {:#x}", expected(pos)))?;
            }
            checked += len as u64;
        }
    }
    // Past the end: refused without touching the device.
    let buf = pool.alloc().ok_or("pool exhausted")?;
    match q.submit_read(0, q.capacity(), 4096, buf) {
        Err((StorageError::OutOfRange { .. }, _)) => {}
        other => return Err(format!("read past the end: {:?}", other.map_err(|(e, _)| e))),
    }
    Ok(checked)
}

fn guest(secs: f64) -> Result<(), String> {
    let pci = vfio::find_auto().map_err(|e| e.to_string())?;
    println!("smoke: NVMe controller {pci}, driver {:?}", vfio::current_driver(&pci));
    vfio::bind_to_vfio_pci(&pci).map_err(|e| e.to_string())?;
    println!("smoke: bound to {:?}", vfio::current_driver(&pci));
    let config = NvmeConfig { io_queues: 2, queue_depth: 64, ..NvmeConfig::default() };
    let ctrl = nvme::open("auto", &config).map_err(|e| e.to_string())?;
    let info = ctrl.info().clone();
    println!("smoke: {info:?}");
    println!("smoke: {:?}, {} I/O queues", ctrl.namespace(), ctrl.io_queues());
    let mut queues: Vec<_> =
        ctrl.into_queues().map_err(|e| e.to_string())?.into_iter().map(|q| q.into_storage()).collect();
    check(queues.len() == 2, || format!("{} queues", queues.len()))?;
    for q in queues.iter_mut() {
        let max = q.max_transfer();
        let bytes = verify_reads(q, max)?;
        let c = q.counters();
        println!("smoke: queue {}: {bytes} bytes checked, counters {c:?}", q.queue_id());
        check(c.reads == 400 && c.errors == 1 && c.timeouts == 0, || format!("counters {c:?}"))?;
    }

    // A controller reset while reads are in flight: they end (or had completed), and both
    // queues serve again afterwards.
    let (first, rest) = queues.split_at_mut(1);
    let (q1, q2) = (&mut first[0], &mut rest[0]);
    let p1 = q1.dma_pool(65536, 8).map_err(|e| e.to_string())?;
    for tag in 0..8u64 {
        let buf = p1.alloc().ok_or("pool exhausted")?;
        q1.submit_read(tag, tag * 65536, 65536, buf).map_err(|(e, _)| e.to_string())?;
    }
    q1.reset_controller().map_err(|e| format!("reset: {e}"))?;
    let mut done = Vec::with_capacity(8);
    let start = std::time::Instant::now();
    while done.len() < 8 && start.elapsed() < Duration::from_secs(5) {
        q1.poll(&mut done);
    }
    let aborted = done.iter().filter(|c| c.result.is_err()).count();
    check(done.len() == 8 && q1.in_flight() == 0, || format!("{} of 8 reads ended after reset", done.len()))?;
    println!("smoke: controller reset with 8 reads in flight: {aborted} aborted, {} had completed", 8 - aborted);
    drop(done);
    for q in [&mut *q1, &mut *q2] {
        let max = q.max_transfer();
        let bytes = verify_reads(q, max)?;
        println!("smoke: queue {} after reset: {bytes} bytes checked", q.queue_id());
    }
    check(q1.controller_resets() == 1, || format!("{} resets", q1.controller_resets()))?;

    let q = &mut queues[0];
    let time = Duration::from_secs_f64(secs);
    for (depth, size) in BENCH_RUNS {
        let r = bench::run(q, depth, size, time).map_err(|e| e.to_string())?;
        print_bench("nvme-vfio", depth, size, r.reads_per_s(), r.bytes_per_s(), r.errors);
        check(r.errors == 0 && r.reads > 0, || format!("bench {r:?}"))?;
    }
    Ok(())
}

fn hugepages() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        meminfo.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).unwrap_or("?").to_string()
    };
    format!("hugepages: {} total, {} free", field("HugePages_Total:"), field("HugePages_Free:"))
}

/// (queue depth, read size): 4 KiB at depths 1..64, then 128 KiB reads at 1, 8 and 32.
const BENCH_RUNS: [(usize, usize); 10] = [
    (1, 4096), (2, 4096), (4, 4096), (8, 4096), (16, 4096), (32, 4096), (64, 4096),
    (1, 131072), (8, 131072), (32, 131072),
];

fn print_bench(backend: &str, depth: usize, size: usize, reads_per_s: f64, bytes_per_s: f64, errors: u64) {
    println!(
        "bench: {backend} qd={depth} size={size} reads/s={reads_per_s:.0} MB/s={:.1} errors={errors}",
        bytes_per_s / 1e6
    );
}

/// The kernel's nvme driver on the same drive: `depth` threads, each with one synchronous
/// O_DIRECT read outstanding at a time, at random block-aligned offsets.
fn kernel_bench(device: &str, secs: f64) -> Result<(), String> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicU64, Ordering};
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(device)
            .map_err(|e| format!("open {device}: {e}"))
    };
    let capacity = open()?.metadata().map_err(|e| e.to_string())?.len();
    let capacity = if capacity == 0 {
        // Block devices report 0 in metadata; seek to the end instead.
        use std::io::Seek;
        open()?.seek(std::io::SeekFrom::End(0)).map_err(|e| e.to_string())?
    } else {
        capacity
    };
    for (depth, size) in BENCH_RUNS {
        let reads = AtomicU64::new(0);
        let bad = AtomicU64::new(0);
        let start = std::time::Instant::now();
        let time = Duration::from_secs_f64(secs);
        std::thread::scope(|s| {
            for t in 0..depth {
                let (reads, bad) = (&reads, &bad);
                let file = open();
                s.spawn(move || {
                    let Ok(file) = file else { bad.fetch_add(1, Ordering::Relaxed); return };
                    let layout = std::alloc::Layout::from_size_align(size, 4096).expect("layout");
                    let mut buf = drivers::storage::DmaPool::heap(layout.size(), 1, 4096).alloc().expect("buffer");
                    let mut state = 0x9e37_79b9_7f4a_7c15u64 ^ ((t as u64 + 1) * 0x1234_5678_9abc_def1);
                    let slots = capacity / size as u64;
                    let mut first = true;
                    while start.elapsed() < time {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let offset = (state % slots) * size as u64;
                        match file.read_exact_at(&mut buf.as_mut_slice()[..size], offset) {
                            Ok(()) => {
                                if first && buf.as_slice()[..size].iter().enumerate().any(|(i, b)| *b != expected(offset + i as u64)) {
                                    bad.fetch_add(1, Ordering::Relaxed);
                                }
                                first = false;
                                reads.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(_) => {
                                bad.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        let elapsed = start.elapsed().as_secs_f64();
        let n = reads.load(Ordering::Relaxed);
        let errors = bad.load(Ordering::Relaxed);
        print_bench("kernel-odirect", depth, size, n as f64 / elapsed, (n * size as u64) as f64 / elapsed, errors);
        check(errors == 0 && n > 0, || format!("kernel bench qd={depth}: {n} reads, {errors} errors"))?;
    }

    // The same loop as the NVMe driver's runs, over the file backend on the same device.
    let mut file = FileStorage::open(std::path::Path::new(device)).map_err(|e| e.to_string())?;
    check(file.is_direct(), || format!("{device}: the file backend fell back to buffered reads"))?;
    check(file.capacity() == capacity, || format!("file backend capacity {} != {capacity}", file.capacity()))?;
    let time = Duration::from_secs_f64(secs);
    for (depth, size) in BENCH_RUNS {
        let r = bench::run(&mut file, depth, size, time).map_err(|e| e.to_string())?;
        print_bench("kernel-file", depth, size, r.reads_per_s(), r.bytes_per_s(), r.errors);
        check(r.errors == 0 && r.reads > 0, || format!("file backend bench {r:?}"))?;
    }
    // And one checked read through it.
    let pool = file.dma_pool(65536, 1).map_err(|e| e.to_string())?;
    let offset = capacity / 2 / 4096 * 4096;
    let buf = pool.alloc().ok_or("pool exhausted")?;
    file.submit_read(1, offset, 65536, buf).map_err(|(e, _)| e.to_string())?;
    let mut done = Vec::with_capacity(1);
    file.poll(&mut done);
    let c = done.pop().ok_or("file backend: no completion")?;
    c.result.clone().map_err(|e| e.to_string())?;
    let bad = c.buf.as_slice()[..65536].iter().enumerate().filter(|(i, b)| **b != expected(offset + *i as u64)).count();
    check(bad == 0, || format!("file backend: {bad} wrong bytes at {offset}"))?;
    Ok(())
}

fn main() {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Info));
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("make-image") if args.len() == 3 => {
            let bytes: u64 = args[2].parse().expect("size in bytes");
            make_image(&args[1], bytes).expect("write image");
        }
        Some("guest") => {
            let secs = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            match guest(secs) {
                Ok(()) => println!("NVME-GUEST-SMOKE: PASS"),
                Err(e) => {
                    println!("NVME-GUEST-SMOKE: FAIL: {e}");
                    std::process::exit(1);
                }
            }
        }
        Some("kernel-bench") if args.len() >= 2 => {
            let secs = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1.0);
            match kernel_bench(&args[1], secs) {
                Ok(()) => println!("NVME-KERNEL-BENCH: PASS"),
                Err(e) => {
                    println!("NVME-KERNEL-BENCH: FAIL: {e}");
                    std::process::exit(1);
                }
            }
        }
        _ => {
            eprintln!(
                "usage: nvme_guest_smoke make-image <path> <bytes> | guest [seconds per depth] \
                 | kernel-bench <block device> [seconds per depth]"
            );
            std::process::exit(2);
        }
    }
}
