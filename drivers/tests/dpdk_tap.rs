//! The DPDK backend against the Linux kernel: EAL with `--no-huge --no-pci` and a `net_tap`
//! vdev, inside a network namespace made for the test. Exchanges ARP, ICMP echo and a TCP SYN
//! (checksums offloaded) with the kernel on the other side of the tap, and sends TCP frames
//! through `Nic::tx_tcp` (device offloads on net_tap, software on net_af_packet) whose
//! segments a packet socket on the kernel's side checks.
//!
//! EAL can be initialised once per process, so each case runs in its own child process: the
//! test re-executes its own binary under `unshare --net` and waits for it, bounded in time.
#![cfg(feature = "dpdk")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use drivers::nic::dpdk::{DpdkConfig, DpdkNic, TxOffload};
use drivers::nic::offload::MAX_TSO_PAYLOAD;
use drivers::nic::packet::PacketNic;
use drivers::nic::{FrameBuf, Nic, TcpTx, TxOffloads};

const CASE_ENV: &str = "DPDK_TAP_TEST_CASE";
/// The EAL file prefix of a case, chosen by the parent, which removes EAL's runtime directory
/// (`/var/run/dpdk/<prefix>`, left behind even with --no-shconf) once the case has ended.
const PREFIX_ENV: &str = "DPDK_TAP_TEST_PREFIX";
const KERNEL_IP: [u8; 4] = [192, 0, 2, 1];
const OUR_IP: [u8; 4] = [192, 0, 2, 2];
const CHILD_LIMIT: Duration = Duration::from_secs(120);
const REPLY_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn dpdk_tap_talks_to_the_kernel() {
    match std::env::var(CASE_ENV).as_deref() {
        Ok("one_queue") => one_queue(),
        Ok("two_queues") => two_queues(),
        Ok("af_packet") => af_packet(),
        Ok(other) => panic!("unknown case {other}"),
        Err(_) => {
            run_case("one_queue", "dpdk_tap_talks_to_the_kernel");
            run_case("two_queues", "dpdk_tap_talks_to_the_kernel");
            run_case("af_packet", "dpdk_tap_talks_to_the_kernel");
        }
    }
}

/// Runs this test binary again in a fresh network namespace with `case` selected.
fn run_case(case: &str, test_name: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let prefix = format!("apl-drv-{case}-{}", std::process::id());
    let rundir = std::path::Path::new("/var/run/dpdk").join(&prefix);
    let mut child = Command::new("unshare")
        .arg("--net")
        .arg("--")
        .arg(&exe)
        .args(["--exact", test_name, "--nocapture", "--test-threads=1"])
        .env(CASE_ENV, case)
        .env(PREFIX_ENV, &prefix)
        .stdin(Stdio::null())
        .spawn()
        .expect("run `unshare --net` (util-linux; needs root)");
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the case") {
            break Some(status);
        }
        if start.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&rundir);
    match status {
        Some(status) => assert!(status.success(), "case {case} failed: {status}"),
        None => panic!("case {case} did not finish within {CHILD_LIMIT:?}"),
    }
    assert!(!rundir.exists(), "{} is left behind", rundir.display());
}

/// The EAL file prefix the parent chose for this case.
fn eal_prefix() -> String {
    std::env::var(PREFIX_ENV).expect("the case runs under run_case")
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run ip (iproute2)");
    assert!(status.success(), "ip {args:?} failed: {status}");
}

fn eal_args(iface: &str) -> String {
    // --no-shconf and a file prefix of its own: parallel runs do not collide. (--in-memory
    // would, but 22.11 refuses it with --no-huge.)
    let prefix = eal_prefix();
    format!("--no-huge --no-pci -m 256 --no-shconf --file-prefix={prefix} --log-level=lib.eal:warning --vdev=net_tap0,iface={iface}")
}

fn start(iface: &str, queues: u16) -> DpdkNic {
    ip(&["link", "set", "lo", "up"]);
    // Room for a batch of 256 TSO frames of 64 KiB (32 mbufs each) beside the rings.
    let cfg = DpdkConfig {
        port: 0,
        queues,
        mbufs: 16383,
        rx_desc: 512,
        tx_desc: 512,
        ..DpdkConfig::default()
    };
    let nic = DpdkNic::start(&eal_args(iface), cfg).expect("DPDK port starts");
    ip(&["addr", "add", "192.0.2.1/24", "dev", iface]);
    ip(&["link", "set", iface, "up"]);
    let deadline = Instant::now() + REPLY_LIMIT;
    while !nic.link().up {
        assert!(Instant::now() < deadline, "link of {iface} never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    nic
}

fn one_queue() {
    let iface = format!("dpdkt{}", std::process::id() % 100_000);
    let mut nic = start(&iface, 1);

    // EAL found the PMDs in its plugin directory by itself (no -d argument given).
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    for pmd in [
        "librte_net_tap",
        "librte_net_af_packet",
        "librte_net_virtio",
    ] {
        assert!(maps.contains(pmd), "{pmd} was not loaded by EAL");
    }
    // EAL pinned this thread to its main lcore; start() gave it its own mask back.
    let status = std::fs::read_to_string("/proc/thread-self/status").expect("thread status");
    let allowed = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("Cpus_allowed_list:"))
            .map(str::to_owned)
    };
    let process = std::fs::read_to_string("/proc/self/status").expect("process status");
    assert_eq!(
        allowed(&status),
        allowed(&process),
        "EAL's pinning was not undone"
    );
    let link = nic.link();
    assert_eq!(link.driver, "dpdk:net_tap");
    assert_eq!(link.mtu, 1500);
    assert!(link.up);
    let mac = link.mac;
    assert_ne!(mac, [0; 6]);

    // EAL and queues are one-off: a second start or a second handle of a queue is refused.
    assert!(DpdkNic::start(&eal_args(&iface), DpdkConfig::default()).is_err());
    assert!(nic.queue(0).is_err(), "queue 0 is already handed out");
    assert!(nic.queue(1).is_err(), "there is no queue 1");
    // Bad input is refused, counted, and does not wedge the queue.
    assert!(
        nic.tx_gather(&[&[0u8; 4000]]),
        "an oversize frame is dropped, not retried"
    );
    assert!(nic.tx_gather(&[]), "an empty frame is dropped, not retried");
    assert_eq!(nic.tx_flush(), 0);

    let pool_idle = nic.pool_available();
    let before = nic.counters();

    let kernel_mac = arp_for_kernel(&mut nic, mac);
    ping_kernel(&mut nic, mac, kernel_mac);
    let eth = ether(kernel_mac, mac, 0x0800);

    // TCP SYN to a closed port with IPv4 and TCP checksums left to the device: the kernel
    // answers RST only if both came out right.
    let offloads = nic.offloads();
    assert!(
        offloads.tx_ipv4_cksum && offloads.tx_tcp_cksum,
        "net_tap offers checksum offloads: {offloads:?}"
    );
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    // The pseudo-header checksum (not inverted), as DPDK's TCP checksum offload expects.
    let pseudo = !checksum(&pseudo_header(6, tcp.len()), 0);
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    let ipv4 = ipv4_header(6, tcp.len(), false);
    let offload = TxOffload {
        l2_len: 14,
        l3_len: 20,
        l4_len: 20,
        ipv4_cksum: true,
        tcp_cksum: true,
        tso_segsz: 0,
    };
    assert!(nic.tx_gather_offload(&[&eth, &ipv4, &tcp], &offload));
    assert_eq!(nic.tx_flush(), 1);
    wait_for(&mut nic, mac, |f| {
        let b = f.bytes();
        (b.len() >= 54
            && b[12..14] == [0x08, 0x00]
            && b[23] == 6
            && b[26..30] == KERNEL_IP
            && b[34..36] == 9u16.to_be_bytes()
            && b[36..38] == 40000u16.to_be_bytes()
            && b[47] & 0x04 != 0)
            .then_some(())
    });

    // TSO: one 3054-byte frame of three 1000-byte segments (an ACK to the same closed port),
    // copied into chained mbufs. The kernel resets each segment it gets: three RSTs, not one.
    assert!(
        nic.max_tso_frame() >= 65535,
        "net_tap offers TSO: {:?}",
        nic.offloads()
    );
    let payload = vec![0x5au8; 3000];
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40001u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x1000_0000u32.to_be_bytes());
    tcp[8..12].copy_from_slice(&0x2000_0000u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x10; // ACK
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    // For TSO DPDK wants the pseudo-header checksum without the length.
    let pseudo = !checksum(&pseudo_header(6, 0), 0);
    tcp[16..18].copy_from_slice(&pseudo.to_be_bytes());
    let ipv4 = ipv4_header(6, tcp.len() + payload.len(), false);
    let tso = TxOffload {
        tso_segsz: 1000,
        ..offload
    };
    assert!(nic.tx_gather_offload(&[&eth, &ipv4, &tcp, &payload], &tso));
    assert_eq!(nic.tx_flush(), 1);
    let mut resets = 0;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut frames = Vec::with_capacity(64);
    while resets < 3 && Instant::now() < deadline {
        nic.rx_burst(&mut frames, 32);
        resets += frames
            .drain(..)
            .filter(|f| {
                let b = f.bytes();
                b.len() >= 54
                    && b[12..14] == [0x08, 0x00]
                    && b[23] == 6
                    && b[26..30] == KERNEL_IP
                    && b[36..38] == 40001u16.to_be_bytes()
                    && b[47] & 0x04 != 0
            })
            .count();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(resets, 3, "the kernel got the TSO frame as three segments");

    // tx_tcp as the stack uses it: the port advertises checksum and segmentation offload, and
    // frames of many segments come out as valid segments that fit the MTU.
    assert_eq!(
        nic.link().offloads,
        TxOffloads {
            tcp_checksum: true,
            tso_max_payload: MAX_TSO_PAYLOAD
        },
        "net_tap: TCP checksum and TSO"
    );
    // The kernel's side of the link, seen through the AF_PACKET backend.
    let mut capture = PacketNic::open(&iface).expect("packet socket on the tap");
    for (port, len, mss) in [
        (40010, 700, 1448),
        (40011, 20_000, 1448),
        (40012, MAX_TSO_PAYLOAD, 1448),
        (40013, 9_000, 1001),
    ] {
        let segments = send_tcp(&mut nic, &mut capture, eth, port, len, mss, odd_cuts(len), None);
        // net_tap's TSO emits segments whose frame, Ethernet header included, fits 1500 bytes,
        // of an even size: 1434 payload bytes behind 66 bytes of headers.
        let size = if len <= mss {
            len
        } else {
            mss.min(1500 - 66) & !1
        };
        assert_eq!(segments, len.div_ceil(size), "{len} bytes at MSS {mss}");
    }
    assert_eq!(xstat(&nic, "sw_tx_payload_zero_copy_bytes"), 0, "no pool handed over yet");

    // Zero-copy: payload in a storage pool handed to the queue goes out from there (chained
    // behind the headers, short parts copied), in gather lists shaped like the stack's: odd
    // cuts, and TLS records (5-byte header, body, 17-byte trailer). Byte-exact with valid
    // checksums on the kernel's side, and the counters say which path ran.
    let storage = drivers::storage::DmaPool::heap(MAX_TSO_PAYLOAD + 4096, 2, 4096);
    nic.tx_from_pool(&storage);
    assert!(nic.zero_copy(), "net_tap sends from the pool");
    let mut buf = storage.alloc().expect("a storage buffer");
    let (zc0, copied0) = (
        xstat(&nic, "sw_tx_payload_zero_copy_bytes"),
        xstat(&nic, "sw_tx_payload_copied_bytes"),
    );
    let mut total = 0u64;
    for (port, len, mss, tls) in [
        (40020, 60_000, 1448, false),
        (40021, MAX_TSO_PAYLOAD, 1448, true),
        (40022, 1000, 1448, false),
        (40023, 9_000, 1001, true),
        (40024, 40_001, 1448, true),
    ] {
        let cuts = if tls { tls_cuts(len) } else { odd_cuts(len) };
        send_tcp(&mut nic, &mut capture, eth, port, len, mss, cuts, Some(buf.as_mut_slice()));
        total += len as u64;
    }
    let (zc, copied) = (
        xstat(&nic, "sw_tx_payload_zero_copy_bytes") - zc0,
        xstat(&nic, "sw_tx_payload_copied_bytes") - copied0,
    );
    eprintln!("zero-copy: {zc} of {total} payload bytes, {copied} copied");
    assert_eq!(zc + copied, total, "every payload byte counted once");
    assert!(zc >= total * 9 / 10, "{zc} of {total} bytes without copying");
    assert_eq!(xstat(&nic, "sw_tx_zero_copy_fallback"), 0);
    // net_tap frees every mbuf in rte_eth_tx_burst: after the flushes no storage buffer is
    // held, and the buffer just sent from is handed out again (first in, first out).
    let sent_from = buf.index();
    drop(buf);
    assert_eq!(storage.ready(2), 2, "no storage buffer is held after the flushes");
    let other = storage.alloc().expect("the buffer never used");
    assert_eq!(storage.alloc().expect("the buffer sent from").index(), sent_from);
    drop(other);
    assert_eq!(xstat(&nic, "sw_tx_zero_copy_buffer_waits"), 0);

    // Receive benchmark: the kernel floods UDP datagrams at our address from another thread.
    let flood = std::thread::spawn(|| {
        let socket = std::net::UdpSocket::bind("192.0.2.1:0").expect("bind in the namespace");
        let datagram = [0x33u8; 1472];
        let mut sent = 0u32;
        let start = Instant::now();
        for _ in 0..5000 {
            // ENOBUFS and the like just mean the kernel dropped it: the count says so.
            if socket.send_to(&datagram, "192.0.2.2:9").is_ok() {
                sent += 1;
            }
        }
        eprintln!("flood of 5000 datagrams took {:?}", start.elapsed());
        sent
    });
    // Only the flood counts: the kernel also sends frames of its own (IPv6 neighbour discovery).
    let is_flood = |b: &[u8]| {
        b.len() == 1514 && b[12..14] == [0x08, 0x00] && b[23] == 17 && b[36..38] == 9u16.to_be_bytes()
    };
    let (received, pps) =
        drivers::nic::bench::bench_rx(&mut nic, 5000, Duration::from_secs(5), is_flood);
    let sent = flood.join().expect("flood thread");
    eprintln!("dpdk net_tap rx: {received} of {sent} frames of 1514 bytes, {pps:.0} frames/s");
    assert!(received > 0 && received <= u64::from(sent));

    // Every received frame went back to the pool; the port counted what crossed it.
    assert_eq!(nic.pool_available(), pool_idle, "mbufs leaked");
    let after = nic.counters();
    assert!(
        after.tx_packets >= before.tx_packets + 3,
        "{before:?} -> {after:?}"
    );
    assert!(
        after.rx_packets >= before.rx_packets + 3,
        "{before:?} -> {after:?}"
    );
    assert!(after.tx_bytes > before.tx_bytes && after.rx_bytes > before.rx_bytes);
    assert_eq!(after.tx_errors, 2, "the oversize and the empty frame");
    let xstats = nic.xstats();
    assert!(
        xstats
            .iter()
            .any(|(name, v)| name == "rx_good_packets" && *v >= 3),
        "{xstats:?}"
    );
    assert!(
        xstats
            .iter()
            .any(|(name, v)| name == "sw_tx_bad_length" && *v == 2),
        "{xstats:?}"
    );

    // A short burst benchmark to the kernel (broadcast frames of an experimental EtherType).
    let pps = drivers::nic::bench::bench_tx(&mut nic, 2000, 1514);
    eprintln!("dpdk net_tap tx: {pps:.0} frames/s of 1514 bytes");
    assert!(pps > 0.0);
    let bench = nic.counters();
    assert_eq!(
        bench.tx_packets - after.tx_packets,
        2000,
        "{after:?} -> {bench:?}"
    );
    assert_eq!(bench.tx_bytes - after.tx_bytes, 2000 * 1514);
    assert_eq!(
        nic.pool_available(),
        pool_idle,
        "mbufs leaked by the benchmark"
    );
}

/// net_af_packet over one end of a veth pair whose other end is the kernel's.
fn af_packet() {
    ip(&["link", "set", "lo", "up"]);
    ip(&[
        "link", "add", "dpdkva", "type", "veth", "peer", "name", "dpdkvb",
    ]);
    ip(&["link", "set", "dpdkva", "up"]);
    ip(&["addr", "add", "192.0.2.1/24", "dev", "dpdkvb"]);
    ip(&["link", "set", "dpdkvb", "up"]);
    let args = format!(
        "--no-huge --no-pci -m 256 --no-shconf --file-prefix={} \
         --log-level=lib.eal:warning --vdev=net_af_packet0,iface=dpdkva",
        eal_prefix()
    );
    let cfg = DpdkConfig {
        mbufs: 8191,
        rx_desc: 512,
        tx_desc: 512,
        ..DpdkConfig::default()
    };
    let mut nic = DpdkNic::start(&args, cfg).expect("DPDK af_packet port starts");
    let link = nic.link();
    assert_eq!(link.driver, "dpdk:net_af_packet");
    let deadline = Instant::now() + REPLY_LIMIT;
    while !nic.link().up {
        assert!(Instant::now() < deadline, "af_packet link never came up");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pool_idle = nic.pool_available();
    let kernel_mac = arp_for_kernel(&mut nic, link.mac);
    ping_kernel(&mut nic, link.mac, kernel_mac);
    // No checksum offload: no offloads advertised, tx_tcp cuts and checksums in software.
    assert_eq!(
        link.offloads,
        TxOffloads::default(),
        "net_af_packet has no TCP offloads"
    );
    let mut capture = PacketNic::open("dpdkvb").expect("packet socket on the veth");
    let eth = ether(kernel_mac, link.mac, 0x0800);
    for (port, len) in [(40020, 700), (40021, 5_000)] {
        let segments = send_tcp(&mut nic, &mut capture, eth, port, len, 1448, odd_cuts(len), None);
        assert_eq!(segments, len.div_ceil(1448));
    }
    // Zero-copy on net_af_packet: frames of one segment gathered from a storage pool.
    let storage = drivers::storage::DmaPool::heap(64 * 1024, 1, 4096);
    nic.tx_from_pool(&storage);
    assert!(nic.zero_copy(), "net_af_packet sends from the pool");
    let mut buf = storage.alloc().expect("a storage buffer");
    for (port, len, tls) in [(40030, 1448, false), (40031, 1400, true), (40032, 999, false)] {
        let cuts = if tls { tls_cuts(len) } else { odd_cuts(len) };
        send_tcp(&mut nic, &mut capture, eth, port, len, 1448, cuts, Some(buf.as_mut_slice()));
    }
    let zc = xstat(&nic, "sw_tx_payload_zero_copy_bytes");
    assert!(zc >= 3000, "{zc} payload bytes without copying");
    drop(buf);
    assert_eq!(storage.ready(1), 1, "net_af_packet let go of every mbuf at each flush");
    let counters = nic.counters();
    assert!(
        counters.tx_packets >= 2 && counters.rx_packets >= 2,
        "{counters:?}"
    );
    assert_eq!(nic.pool_available(), pool_idle, "mbufs leaked");
}

fn two_queues() {
    let iface = format!("dpdku{}", std::process::id() % 100_000);
    let mut q0 = start(&iface, 2);
    let mut q1 = q0.queue(1).expect("queue 1 handle");
    assert!(q0.queue(1).is_err(), "queue 1 is already handed out");
    assert_eq!((q0.queues(), q0.queue_id(), q1.queue_id()), (2, 0, 1));
    assert!(
        q0.offloads().rss,
        "two queues are spread by RSS: {:?}",
        q0.offloads()
    );
    let mac = q0.link().mac;
    // Queue 1 runs on another thread, as a second core would drive it.
    let q1_thread = std::thread::spawn(move || {
        DpdkNic::register_thread().expect("lcore for this thread");
        let mut eth = [0u8; 14];
        eth[..6].copy_from_slice(&[0xff; 6]);
        eth[6..12].copy_from_slice(&mac);
        eth[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert!(q1.tx_gather(&[&eth, &arp(1, mac, OUR_IP, [0; 6], KERNEL_IP)]));
        assert_eq!(q1.tx_flush(), 1);
        q1
    });
    let mut q1 = q1_thread.join().expect("queue 1 thread");
    // The reply may land on either queue (the kernel's tap picks it): poll both.
    let deadline = Instant::now() + REPLY_LIMIT;
    let mut frames = Vec::with_capacity(64);
    let mut found = false;
    while !found {
        assert!(Instant::now() < deadline, "no ARP reply on either queue");
        q0.rx_burst(&mut frames, 32);
        q1.rx_burst(&mut frames, 32);
        found = frames.iter().any(|f| {
            let b = f.bytes();
            b.len() >= 42
                && b[12..14] == [0x08, 0x06]
                && b[20..22] == [0, 2]
                && b[28..32] == KERNEL_IP
        });
        frames.clear();
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(q1);
    assert!(q0.queue(1).is_ok(), "a dropped handle frees its queue");
}

/// Sends `len` payload bytes from port `port` to the kernel's closed port 9 as one TCP frame
/// through `tx_tcp` (66 bytes of headers, TCP timestamps, ACK|PSH|FIN, the payload in parts of
/// odd lengths), and checks what reaches the kernel's side: segments of at most `mss` bytes
/// that fit the MTU, each with a valid IPv4 and TCP checksum, the IPv4 length, the sequence
/// number of its bytes, consecutive identifications, PSH and FIN on the last only, and
/// together the payload. Returns how many segments there were.
#[allow(clippy::too_many_arguments)]
fn send_tcp(
    nic: &mut DpdkNic,
    capture: &mut PacketNic,
    eth: [u8; 14],
    port: u16,
    len: usize,
    mss: usize,
    cuts: Vec<usize>,
    backing: Option<&mut [u8]>,
) -> usize {
    let payload: Vec<u8> = (0..len).map(|i| (i * 7 % 251 + usize::from(port)) as u8).collect();
    let (seq0, id0) = (0xfff0_0000u32 ^ u32::from(port), 0xff00u16);
    let mut tcp = [0u8; 32];
    tcp[0..2].copy_from_slice(&port.to_be_bytes());
    tcp[2..4].copy_from_slice(&9u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq0.to_be_bytes());
    tcp[8..12].copy_from_slice(&1u32.to_be_bytes());
    tcp[12] = 8 << 4;
    tcp[13] = 0x19; // ACK, PSH, FIN
    tcp[14..16].copy_from_slice(&8192u16.to_be_bytes());
    tcp[20..32].copy_from_slice(&[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9]);
    // Without the port's checksum offload, a frame of one segment goes as the stack sends it:
    // checksummed in software and gathered with tx_gather (tx_tcp would copy it into one).
    let soft = !nic.link().offloads.tcp_checksum && len <= mss;
    if soft {
        let mut segment = tcp.to_vec();
        segment.extend_from_slice(&payload);
        let pseudo = pseudo_header(6, segment.len());
        let sum = checksum(&segment, u32::from(!checksum(&pseudo, 0)));
        tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    }
    let mut ipv4 = ipv4_header(6, tcp.len() + len, false);
    ipv4[4..6].copy_from_slice(&id0.to_be_bytes());
    let sum = checksum(&ipv4, 0);
    ipv4[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut hdr = eth.to_vec();
    hdr.extend_from_slice(&ipv4);
    hdr.extend_from_slice(&tcp);
    // The parts come from `backing` (a storage buffer) when given, else from `payload`.
    let source: &[u8] = match backing {
        Some(b) => {
            b[..len].copy_from_slice(&payload);
            &b[..len]
        }
        None => &payload,
    };
    let mut parts: Vec<&[u8]> = vec![&hdr];
    parts.extend(
        cuts.windows(2)
            .map(|w| &source[w[0].min(len)..w[1].min(len)]),
    );
    let frame = TcpTx {
        l4_offset: 34,
        l4_len: 32,
        mss,
    };
    if soft {
        assert!(nic.tx_gather(&parts), "tx_gather of {len} bytes");
    } else {
        assert!(nic.tx_tcp(&parts, frame), "tx_tcp of {len} bytes");
    }
    assert!(nic.tx_flush() >= 1);

    let mut got = Vec::new();
    let mut segments = 0usize;
    let mut frames = Vec::with_capacity(64);
    let deadline = Instant::now() + REPLY_LIMIT;
    while got.len() < len {
        assert!(
            Instant::now() < deadline,
            "{} of {len} bytes from port {port} within {REPLY_LIMIT:?}",
            got.len()
        );
        if capture.rx_burst(&mut frames, 64) == 0 {
            std::thread::sleep(Duration::from_millis(1));
            continue;
        }
        for frame in frames.drain(..) {
            let f = frame.bytes();
            if got.len() == len
                || f.len() < 66
                || f[12..14] != [0x08, 0x00]
                || f[23] != 6
                || f[34..36] != port.to_be_bytes()
            {
                continue;
            }
            assert!(
                f.len() <= 1514,
                "a {}-byte frame does not fit the MTU",
                f.len()
            );
            assert_eq!(checksum(&f[14..34], 0), 0, "IPv4 checksum");
            assert_eq!(
                usize::from(u16::from_be_bytes([f[16], f[17]])),
                f.len() - 14,
                "IPv4 length"
            );
            assert_eq!(
                u16::from_be_bytes([f[18], f[19]]),
                id0.wrapping_add(segments as u16),
                "IPv4 identification"
            );
            let t = &f[34..];
            let pseudo = pseudo_header(6, t.len());
            assert_eq!(
                checksum(t, u32::from(!checksum(&pseudo, 0))),
                0,
                "TCP checksum of segment {segments}"
            );
            let data = &t[32..];
            assert!(
                !data.is_empty() && data.len() <= mss,
                "{} payload bytes at MSS {mss}",
                data.len()
            );
            assert_eq!(
                u32::from_be_bytes([t[4], t[5], t[6], t[7]]),
                seq0.wrapping_add(got.len() as u32),
                "sequence number"
            );
            assert_eq!(t[20..32], tcp[20..32], "options");
            got.extend_from_slice(data);
            let last = got.len() == len;
            assert_eq!(
                t[13],
                if last { 0x19 } else { 0x10 },
                "flags of segment {segments}"
            );
            segments += 1;
        }
    }
    assert!(got == payload, "the segments carry the payload");
    assert_eq!(nic.tx_flush(), 0, "nothing left queued");
    segments
}

/// Payload cuts of odd lengths, one of them short.
fn odd_cuts(len: usize) -> Vec<usize> {
    vec![0, len / 3 + 1, len / 2, len / 2 + 7, len]
}

/// Payload cuts like a TLS response's: 5-byte record headers, bodies of up to 16 KiB and
/// 17-byte trailers, the first record shorter and of odd length.
fn tls_cuts(len: usize) -> Vec<usize> {
    let mut cuts = vec![0];
    let mut at = 0;
    let mut body = 3001;
    while at < len {
        for n in [5, body, 17] {
            at = (at + n).min(len);
            cuts.push(at);
        }
        body = 16384;
    }
    cuts
}

/// The value of one of the port's extended statistics.
fn xstat(nic: &DpdkNic, name: &str) -> u64 {
    nic.xstats()
        .into_iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no xstat {name}"))
        .1
}

/// Sends an ARP request for the kernel's address (gathered from two parts) and returns the MAC
/// of the kernel's reply.
fn arp_for_kernel(nic: &mut DpdkNic, mac: [u8; 6]) -> [u8; 6] {
    let mut eth = [0u8; 14];
    eth[..6].copy_from_slice(&[0xff; 6]);
    eth[6..12].copy_from_slice(&mac);
    eth[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert!(nic.tx_gather(&[&eth, &arp(1, mac, OUR_IP, [0; 6], KERNEL_IP)]));
    assert_eq!(nic.tx_flush(), 1);
    let kernel_mac = wait_for(nic, mac, |f| {
        let b = f.bytes();
        (b.len() >= 42
            && b[12..14] == [0x08, 0x06]
            && b[20..22] == [0, 2]
            && b[28..32] == KERNEL_IP
            && b[38..42] == OUR_IP)
            .then(|| <[u8; 6]>::try_from(&b[22..28]).unwrap())
    });
    kernel_mac
}

/// ICMP echo request; the kernel answers with the same identifier, sequence and payload.
fn ping_kernel(nic: &mut DpdkNic, mac: [u8; 6], kernel_mac: [u8; 6]) {
    let payload: Vec<u8> = (0..56u8).collect();
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend_from_slice(&payload);
    let sum = checksum(&icmp, 0);
    icmp[2..4].copy_from_slice(&sum.to_be_bytes());
    let ipv4 = ipv4_header(1, icmp.len(), true);
    let eth = ether(kernel_mac, mac, 0x0800);
    assert!(nic.tx_gather(&[&eth, &ipv4, &icmp[..8], &icmp[8..]]));
    assert_eq!(nic.tx_flush(), 1);
    wait_for(nic, mac, |f| {
        let b = f.bytes();
        (b.len() >= 34 + 8 + 56
            && b[12..14] == [0x08, 0x00]
            && b[23] == 1
            && b[26..30] == KERNEL_IP
            && b[34] == 0
            && b[38..42] == [0x12, 0x34, 0, 1]
            && b[42..98] == payload[..]
            && checksum(&b[14..34], 0) == 0)
            .then_some(())
    });
}

/// Polls for a frame `pick` accepts, answering the kernel's ARP requests for our address.
fn wait_for<T>(
    nic: &mut DpdkNic,
    mac: [u8; 6],
    mut pick: impl FnMut(&dyn FrameBuf) -> Option<T>,
) -> T {
    let deadline = Instant::now() + REPLY_LIMIT;
    let mut frames = Vec::with_capacity(64);
    loop {
        assert!(
            Instant::now() < deadline,
            "no expected frame within {REPLY_LIMIT:?}"
        );
        nic.rx_burst(&mut frames, 32);
        for f in frames.drain(..) {
            if let Some(found) = pick(&f) {
                return found;
            }
            let b = f.bytes();
            if b.len() >= 42
                && b[12..14] == [0x08, 0x06]
                && b[20..22] == [0, 1]
                && b[38..42] == OUR_IP
            {
                let asker: [u8; 6] = b[22..28].try_into().unwrap();
                let asker_ip: [u8; 4] = b[28..32].try_into().unwrap();
                assert!(nic.tx_gather(&[
                    &ether(asker, mac, 0x0806),
                    &arp(2, mac, OUR_IP, asker, asker_ip)
                ]));
                nic.tx_flush();
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ether(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> [u8; 14] {
    let mut h = [0u8; 14];
    h[..6].copy_from_slice(&dst);
    h[6..12].copy_from_slice(&src);
    h[12..14].copy_from_slice(&ethertype.to_be_bytes());
    h
}

/// An ARP body (padded so the frame reaches the Ethernet minimum).
fn arp(op: u16, sha: [u8; 6], spa: [u8; 4], tha: [u8; 6], tpa: [u8; 4]) -> [u8; 46] {
    let mut a = [0u8; 46];
    a[0..2].copy_from_slice(&1u16.to_be_bytes());
    a[2..4].copy_from_slice(&0x0800u16.to_be_bytes());
    a[4] = 6;
    a[5] = 4;
    a[6..8].copy_from_slice(&op.to_be_bytes());
    a[8..14].copy_from_slice(&sha);
    a[14..18].copy_from_slice(&spa);
    a[18..24].copy_from_slice(&tha);
    a[24..28].copy_from_slice(&tpa);
    a
}

fn ipv4_header(protocol: u8, payload_len: usize, with_checksum: bool) -> [u8; 20] {
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&((20 + payload_len) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&0x4242u16.to_be_bytes());
    h[6] = 0x40; // DF
    h[8] = 64;
    h[9] = protocol;
    h[12..16].copy_from_slice(&OUR_IP);
    h[16..20].copy_from_slice(&KERNEL_IP);
    if with_checksum {
        let sum = checksum(&h, 0);
        h[10..12].copy_from_slice(&sum.to_be_bytes());
    }
    h
}

fn pseudo_header(protocol: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(&OUR_IP);
    p[4..8].copy_from_slice(&KERNEL_IP);
    p[9] = protocol;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// The Internet checksum (ones' complement of the ones' complement sum).
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
