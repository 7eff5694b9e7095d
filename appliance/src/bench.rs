//! `appliance bench`: the fast path measured in-process. One core's server pipeline serves an
//! in-process client over the simulated link (no faults); the server loop's own time is
//! measured apart from the client's, and memcpy is measured in the same run as a reference.
use std::io::Write;
use std::time::{Duration, Instant};

use drivers::nic::sim::SimConfig;
use drivers::storage::FileStorage;

use crate::loopback::SimHarness;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Size of the object served, in MB.
    #[arg(long, default_value_t = 256)]
    pub size_mb: u64,
    /// Concurrent connections (each fetches the whole object once).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Print one JSON line per case instead of text.
    #[arg(long)]
    pub json: bool,
    /// Directory for the temporary volume (default: the system temp dir).
    #[arg(long)]
    pub dir: Option<std::path::PathBuf>,
}

/// Bytes per second of memcpy of 16 KiB blocks over a 64 MiB working set.
pub fn memcpy_gbps(duration: Duration) -> f64 {
    let src = vec![7u8; 64 << 20];
    let mut dst = vec![0u8; 64 << 20];
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < duration {
        for (d, s) in dst.chunks_exact_mut(16 << 10).zip(src.chunks_exact(16 << 10)) {
            d.copy_from_slice(s);
        }
        bytes += src.len() as u64;
        std::hint::black_box(&dst);
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

pub fn run(args: BenchArgs) -> Result<(), String> {
    let dir = tempfile_dir(args.dir.as_deref())?;
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    let size = args.size_mb * 1_000_000;
    {
        let mut f = std::fs::File::create(tree.join("big.ts")).map_err(|e| e.to_string())?;
        let block: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let mut left = size;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            f.write_all(&block[..n]).map_err(|e| e.to_string())?;
            left -= n as u64;
        }
    }
    let vol = dir.join("bench.vol");
    crate::volume::pack(&tree, &vol).map_err(|e| e.to_string())?;
    let mut storage = FileStorage::open(&vol).map_err(|e| e.to_string())?;
    let volume = crate::volume::load(&mut storage).map_err(|e| e.to_string())?;
    let link = SimConfig { queue_frames: 4096, ..SimConfig::default() };
    let mut h = SimHarness::new(storage, volume, link.clone(), link, 512);
    for _ in 0..args.connections {
        if !h.start_fetch("/big.ts", None) {
            return Err("the client could not reach the server over the simulated link".into());
        }
    }
    let start = Instant::now();
    while h.client_app.fetches.len() < args.connections {
        // The clock follows wall time so that timers behave as in production.
        h.clock.set(start.elapsed());
        h.step(false);
        if start.elapsed() > Duration::from_secs(600) {
            return Err("benchmark did not finish in 10 minutes".into());
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let ok = h.client_app.fetches.iter().all(|f| f.complete && f.status == 200);
    let bytes = h.client_app.body_bytes as f64;
    let server_s = h.server_ns as f64 / 1e9;
    let server_gbps = bytes / server_s / 1e9;
    let memcpy = memcpy_gbps(Duration::from_secs(1));
    let _ = std::fs::remove_dir_all(&dir);
    if !ok {
        return Err("a transfer did not complete".into());
    }
    if args.json {
        println!(
            "{{\"case\":\"http-sim\",\"tls\":false,\"connections\":{},\"cores\":1,\"bytes\":{},\"gbps_per_core\":{:.3},\"gbps_total\":{:.3},\"server_seconds\":{:.3},\"wall_seconds\":{:.3},\"ref_memcpy_gbps\":{:.3},\"ratio_to_memcpy\":{:.3}}}",
            args.connections, bytes as u64, server_gbps * 8.0, bytes * 8.0 / wall / 1e9, server_s, wall, memcpy * 8.0, server_gbps / memcpy
        );
    } else {
        println!("served {:.0} MB to {} connection(s) over the simulated link", bytes / 1e6, args.connections);
        println!("server loop: {:.3} s -> {:.2} GB/s ({:.1} Gb/s) on one core", server_s, server_gbps, server_gbps * 8.0);
        println!("whole run (server + in-process client): {:.3} s -> {:.2} GB/s", wall, bytes / wall / 1e9);
        println!("memcpy on this core: {:.2} GB/s", memcpy);
        println!("ratio server/memcpy: {:.3}", server_gbps / memcpy);
    }
    Ok(())
}

fn tempfile_dir(base: Option<&std::path::Path>) -> Result<std::path::PathBuf, String> {
    let base = base.map(|p| p.to_path_buf()).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("appliance-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir)
}
