//! Random reads through the file backend, io_uring beside synchronous `pread`, measured in
//! one run with the loop the NVMe driver's figures come from (`storage::bench::run`).
//!
//!   cargo run --release -p drivers --example file_reads -- PATH [SECONDS]
//!
//! PATH is a volume, any large file or a block device (opened read-only, O_DIRECT where the
//! file system allows it). Prints reads/s and GB/s per queue depth and read size for both
//! ways of reading, and their ratio.
use std::path::Path;
use std::time::Duration;

use drivers::storage::{bench, FileIo, FileStorage, Storage};

const RUNS: [(usize, usize); 6] = [(1, 4096), (8, 4096), (32, 4096), (1, 65536), (8, 65536), (32, 65536)];

fn main() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: file_reads PATH [SECONDS]")?;
    let secs: f64 = args.next().map_or(Ok(1.0), |s| s.parse().map_err(|e| format!("seconds: {e}")))?;
    let time = Duration::from_secs_f64(secs);
    let open = |io| FileStorage::open_with(Path::new(&path), io).map_err(|e| e.to_string());
    let (mut uring, mut sync) = (open(FileIo::Async)?, open(FileIo::Synchronous)?);
    println!("{path}: {} bytes, O_DIRECT {}, first backend reads with {:?}", uring.capacity(), uring.is_direct(), uring.io());
    println!("{:<18} | {:>12} {:>8} | {:>12} {:>8} | {:>6}", "run", "io_uring r/s", "GB/s", "pread r/s", "GB/s", "ratio");
    for (depth, size) in RUNS {
        let a = bench::run(&mut uring, depth, size, time).map_err(|e| e.to_string())?;
        let b = bench::run(&mut sync, depth, size, time).map_err(|e| e.to_string())?;
        println!(
            "{:<18} | {:>12.0} {:>8.3} | {:>12.0} {:>8.3} | {:>6.2}",
            format!("qd={depth} size={size}"),
            a.reads_per_s(),
            a.bytes_per_s() / 1e9,
            b.reads_per_s(),
            b.bytes_per_s() / 1e9,
            a.reads_per_s() / b.reads_per_s().max(1e-9)
        );
    }
    Ok(())
}
