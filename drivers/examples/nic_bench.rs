//! A NIC backend alone, no stack: transmit of MTU frames and receive of a flood, measured with
//! the same loops (`drivers::nic::bench`) for every backend. Prints one JSON line.
//!
//! ```text
//! nic_bench --nic tap:<if> | packet:<if> | dpdk --dpdk-args "<EAL args>"
//!           --flood-if <if> [--frames N] [--frame-len BYTES]
//! ```
//! `--flood-if` is the kernel-side interface that reaches the port (the TAP itself, the tap
//! net_tap made, the far end of a veth pair): a thread floods frames addressed to the port's
//! MAC into it through an AF_PACKET socket with `sendmmsg`, bypassing the kernel's IP stack so
//! that the generator is as cheap as it can be. Run as root, in a network namespace of its own
//! (`ci/bench-nic` does all of that).
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use drivers::nic::bench::{bench_rx, bench_tx};
use drivers::nic::Nic;

/// The flood's EtherType (IEEE local experimental 1): nothing in the kernel answers it.
const FLOOD_ETHERTYPE: u16 = 0x88b6;
/// Datagrams per sendmmsg call.
const FLOOD_BATCH: usize = 64;

struct Options {
    nic: String,
    dpdk_args: String,
    flood_if: String,
    frames: u64,
    frame_len: usize,
}

fn parse() -> Result<Options, String> {
    let mut o = Options { nic: String::new(), dpdk_args: String::new(), flood_if: String::new(), frames: 500_000, frame_len: 1514 };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--nic" => o.nic = value()?,
            "--dpdk-args" => o.dpdk_args = value()?,
            "--flood-if" => o.flood_if = value()?,
            "--frames" => o.frames = value()?.parse().map_err(|e| format!("--frames: {e}"))?,
            "--frame-len" => o.frame_len = value()?.parse().map_err(|e| format!("--frame-len: {e}"))?,
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    if o.nic.is_empty() || o.flood_if.is_empty() {
        return Err("usage: nic_bench --nic tap:<if>|packet:<if>|dpdk [--dpdk-args ARGS] --flood-if <if> [--frames N] [--frame-len B]".into());
    }
    if !(60..=1514).contains(&o.frame_len) {
        return Err("--frame-len: 60..=1514".into());
    }
    Ok(o)
}

/// An AF_PACKET socket bound to `ifname` for sending raw frames.
fn raw_socket(ifname: &str) -> io::Result<OwnedFd> {
    let name = std::ffi::CString::new(ifname).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: name is NUL-terminated.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain socket(2); the result is checked.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_ll is plain old data; zero is valid before filling it.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_ifindex = index as i32;
    // SAFETY: addr is a valid sockaddr_ll of the length given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Sends frames to `dst` on `ifname` until `stop`; returns how many the kernel took.
fn flood(ifname: &str, dst: [u8; 6], frame_len: usize, stop: &AtomicBool) -> io::Result<u64> {
    let fd = raw_socket(ifname)?;
    let mut frame = vec![0x5au8; frame_len];
    frame[..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0xf1, 0x00]);
    frame[12..14].copy_from_slice(&FLOOD_ETHERTYPE.to_be_bytes());
    let mut iov = [libc::iovec { iov_base: frame.as_mut_ptr().cast(), iov_len: frame_len }; FLOOD_BATCH];
    // SAFETY: mmsghdr is plain old data; zero is valid before filling it.
    let mut msgs: [libc::mmsghdr; FLOOD_BATCH] = unsafe { std::mem::zeroed() };
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: every message points at one iovec over `frame`, alive for the call.
        let n = unsafe { libc::sendmmsg(fd.as_raw_fd(), msgs.as_mut_ptr(), FLOOD_BATCH as u32, 0) };
        if n > 0 {
            sent += n as u64;
        } else {
            // The device queue is full (ENOBUFS): let the reader catch up.
            std::thread::yield_now();
        }
    }
    Ok(sent)
}

fn run<N: Nic>(mut nic: N, o: &Options, backend: &str) -> Result<(), String> {
    let link = nic.link();
    // Let the link settle (a TAP's carrier, net_tap's interface) before measuring.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !nic.link().up && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let tx_pps = bench_tx(&mut nic, o.frames, o.frame_len);
    // The kernel end must be up to carry the flood (net_tap makes its interface down).
    let up = std::process::Command::new("ip").args(["link", "set", &o.flood_if, "up"]).status();
    if !matches!(up, Ok(s) if s.success()) {
        return Err(format!("cannot bring {} up: {up:?}", o.flood_if));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let flood_thread = {
        let (stop, ifname, mac, len) = (stop.clone(), o.flood_if.clone(), link.mac, o.frame_len);
        std::thread::spawn(move || flood(&ifname, mac, len, &stop))
    };
    let len = o.frame_len;
    let is_flood = move |b: &[u8]| b.len() == len && b[12..14] == FLOOD_ETHERTYPE.to_be_bytes();
    let (received, rx_pps) = bench_rx(&mut nic, o.frames, Duration::from_secs(30), is_flood);
    stop.store(true, Ordering::Relaxed);
    let offered = flood_thread.join().map_err(|_| "flood thread panicked".to_string())?.map_err(|e| format!("flood on {}: {e}", o.flood_if))?;
    let gbps = |pps: f64| pps * o.frame_len as f64 * 8.0 / 1e9;
    println!(
        "{{\"backend\":\"{backend}\",\"driver\":\"{}\",\"frame_len\":{},\"tx_frames\":{},\"tx_pps\":{:.0},\"tx_gbps\":{:.3},\"rx_frames\":{received},\"rx_offered\":{offered},\"rx_pps\":{:.0},\"rx_gbps\":{:.3}}}",
        link.driver,
        o.frame_len,
        o.frames,
        tx_pps,
        gbps(tx_pps),
        rx_pps,
        gbps(rx_pps)
    );
    Ok(())
}

fn main() {
    env_logger::init();
    let o = match parse() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("nic_bench: {e}");
            std::process::exit(2);
        }
    };
    let result = if let Some(name) = o.nic.strip_prefix("tap:") {
        drivers::nic::tap::TapNic::open(name).map_err(|e| e.to_string()).and_then(|n| run(n, &o, "tap"))
    } else if let Some(name) = o.nic.strip_prefix("packet:") {
        drivers::nic::packet::PacketNic::open(name).map_err(|e| e.to_string()).and_then(|n| run(n, &o, "packet"))
    } else if o.nic == "dpdk" {
        start_dpdk(&o)
    } else {
        Err(format!("--nic {}: expected tap:<if>, packet:<if> or dpdk", o.nic))
    };
    if let Err(e) = result {
        eprintln!("nic_bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(feature = "dpdk")]
fn start_dpdk(o: &Options) -> Result<(), String> {
    let nic = drivers::nic::dpdk::DpdkNic::start(&o.dpdk_args, drivers::nic::dpdk::DpdkConfig::default()).map_err(|e| e.to_string())?;
    let pmd = nic.link().driver.clone();
    run(nic, o, &pmd)
}

#[cfg(not(feature = "dpdk"))]
fn start_dpdk(_: &Options) -> Result<(), String> {
    Err("built without the dpdk feature".into())
}
