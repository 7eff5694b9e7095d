//! `appliance serve`: builds one pipeline per core from the command-line settings (NIC
//! backend and its queues, media and its queues, addresses, ports) and runs them, each pinned
//! to its core, with the management console polled on the first core.
pub mod board;
pub mod credentials;
pub mod host;
pub mod http_app;
pub mod pipeline;
pub mod slab;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drivers::nic::Nic;
use drivers::storage::{Backend, Drives, Storage, Unavailable};

use crate::console::{ConsoleService, PowerAction};
use crate::net::iface::{IfaceConfig, Stack};
use crate::net::SEC;
use crate::volume;
use board::Board;
use http_app::HttpApp;
use pipeline::Pipeline;

/// Settings of `appliance serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// NIC backend: `tap:<ifname>` (attach or create a Linux TAP device), `packet:<ifname>` (an
    /// AF_PACKET socket on a kernel interface, as in the image before DPDK) or `dpdk`.
    #[arg(long)]
    pub nic: String,
    /// EAL arguments for `--nic dpdk`, e.g. "--no-huge --no-pci --vdev=net_tap0,iface=dtap0".
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    pub dpdk_args: String,
    /// The appliance's address and prefix length, e.g. 10.77.0.2/24.
    #[arg(long)]
    pub ip: String,
    /// Default gateway for peers off the local subnet.
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// MAC address to use (default: the backend's own).
    #[arg(long)]
    pub mac: Option<String>,
    /// Media volume made by `appliance pack`: a file or block device path, or
    /// `nvme:<pci address>` / `nvme:auto` for namespace 1 of an NVMe controller driven by the
    /// userspace driver over vfio (the device must be bound to vfio-pci or to no driver; it
    /// needs an IOMMU group: intel_iommu=on or amd_iommu=on). `nvme:auto` takes the first NVMe
    /// controller that no kernel driver holds and no other --media names.
    ///
    /// Several volumes, one per drive, are served at once: a comma-separated list
    /// (`--media a.vol,nvme:0000:00:04.0`) or --media given more than once; drive 0 is the
    /// first listed. A path packed on more than one volume is served from the first listed
    /// (warned at start-up, shown by the console's `media`). A drive whose reads fail or time
    /// out ends only the transfers reading from it (counted per drive in `stats json`
    /// storage.drives); an NVMe controller that stops answering is reset; the other drives
    /// keep serving. A drive that cannot be opened or whose volume does not load at start is
    /// left out (logged; `status` says why) and the others are served; with a single
    /// --media, or when no drive loads, serve stops with the error.
    #[arg(long, value_name = "PATH | nvme:<pci address> | nvme:auto", required = true, value_delimiter = ',')]
    pub media: Vec<String>,
    #[arg(long, default_value_t = 80)]
    pub http_port: u16,
    /// Certificate chain (PEM) for HTTPS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for HTTPS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[arg(long, default_value_t = 443)]
    pub https_port: u16,
    /// Do not resume TLS sessions: issue no session tickets and accept none, so that every
    /// HTTPS connection makes a full handshake. By default a TLS 1.3 handshake ends with two
    /// tickets and a TLS 1.2 one with one; a client that comes back with one skips the
    /// certificate and its signature. The tickets are encrypted under keys made at start-up
    /// (random, never written out, rotated every 6 hours; a ticket is good for 12), so a
    /// restart makes every client do a full handshake again.
    #[arg(long)]
    pub no_tls_tickets: bool,
    /// The AES-GCM implementation that seals response records: `aws-lc-rs` or `ring`. By
    /// default both are measured at start (about 0.1 s) and the faster is taken: aws-lc-rs
    /// where the CPU has AVX-512, ring where it has VAES without it (docs/tls.md). The log
    /// and the console's `tls` say which.
    #[arg(long, value_enum)]
    pub aead: Option<crate::tls::AeadImpl>,
    /// Cores to run pipelines on, e.g. "0-3" or "1,3" (default: every allowed core).
    #[arg(long)]
    pub cores: Option<String>,
    /// Management console: `stdio`, a tty such as /dev/ttyS0, or `unix:<path>`; `,echo` echoes input.
    #[arg(long, default_value = "stdio")]
    pub console: String,
    /// Most connections per core.
    #[arg(long, default_value_t = 16384)]
    pub max_connections: usize,
    /// 512 KiB storage buffers per core: bound the data read from storage and not yet sent
    /// (a buffer goes back once its bytes are sent). Default 8 (4 MiB a core, which stays
    /// in the caches until it is sealed and sent), 64 with `--nic dpdk`, whose zero-copy
    /// transmit holds a buffer until the PMD frees its mbufs (late, on some PMDs). 4 to 8192.
    #[arg(long, value_parser = parse_buffers)]
    pub buffers: Option<usize>,
    /// Seconds a connection may go without progress before it is closed: no new data from
    /// the peer, and less than a segment of ours acknowledged (a peer that holds a zero
    /// window, or takes a byte per probe, is closed after it).
    #[arg(long, default_value_t = 60)]
    pub idle_timeout: u64,
    /// Seconds a request head may take to arrive whole (from the connection's start for the
    /// first one, TLS handshake included; from its first byte for later ones). Past it, a
    /// partial head gets 408 and the connection closes (slowloris defence). 0: no limit.
    #[arg(long, default_value_t = 10)]
    pub header_timeout: u64,
    /// Do not use the port's TCP transmit offloads (checksum and segmentation, e.g. the TAP's
    /// virtio-net header): one MSS a frame, checksummed by the core. For comparisons.
    #[arg(long)]
    pub no_tx_offload: bool,
    /// Do not take the port's receive checksum verdicts (DPDK's checksum flags, the TAP's
    /// virtio-net header): every received IPv4 header and TCP checksum is summed by the core.
    /// For comparisons, or a port whose verification is not to be trusted.
    #[arg(long)]
    pub no_rx_offload: bool,
    /// TCP congestion control: `cubic` (RFC 9438) or `newreno` (default: cubic).
    #[arg(long, value_name = "cubic|newreno")]
    pub congestion: Option<crate::net::tcp::CongestionControl>,
    /// Pace TCP sends over the round trip (gain x cwnd / SRTT; with offload, segments of
    /// about 1 ms of that rate) instead of sending what the windows allow at once.
    #[arg(long, conflicts_with = "no_pacing")]
    pub pacing: bool,
    /// Do not pace (the default).
    #[arg(long)]
    pub no_pacing: bool,
    /// Benchmarks only (the Disk|Crypt|Net paper's emulated TLS): on the HTTP port, send each
    /// response body as TLS 1.3 AES-128-GCM records sealed with a fixed, public dummy key, the
    /// head in clear with Content-Length the records' length and `X-Tls-Emulation:
    /// aes-128-gcm`. Protects nothing. HTTPS is unaffected. See docs/performance.md.
    #[arg(long)]
    pub tls_emulation: bool,
    /// What each drive of --media turned out to be (the NVMe controller `nvme:auto` found),
    /// for `status`.
    #[arg(skip)]
    pub media_detail: Vec<Option<String>>,
    /// Each drive of --media as found: `nvme:<pci address>` for `nvme:auto`, else as given
    /// (`stats json` storage.drives[].source).
    #[arg(skip)]
    pub media_found: Vec<String>,
    /// The HTTPS configuration to start with ([`credentials::at_start`]), made by `serve`.
    #[arg(skip)]
    pub tls: Option<Box<credentials::TlsState>>,
    /// What seals response records: `--aead`, or measured by `serve` at start.
    #[arg(skip)]
    pub aead_choice: Box<crate::tls::AeadChoice>,
}

/// Where `--media` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaSpec {
    /// A volume file or block device, read through [`drivers::storage::FileStorage`].
    File(PathBuf),
    /// An NVMe controller for the userspace driver: "auto" or a PCI address such as
    /// "0000:00:04.0" (the short "00:04.0" means domain 0).
    Nvme(String),
}

impl MediaSpec {
    /// `nvme:auto`, `nvme:<pci address>`, or anything else as a path. The address is checked
    /// for its form here and for its existence when the device is opened.
    pub fn parse(s: &str) -> Result<MediaSpec, ServeError> {
        let Some(rest) = s.strip_prefix("nvme:") else {
            if s.is_empty() {
                return Err(ServeError::Option("--media: empty (expected a volume path, nvme:<pci address> or nvme:auto)".into()));
            }
            return Ok(MediaSpec::File(PathBuf::from(s)));
        };
        let rest = rest.trim();
        if rest.eq_ignore_ascii_case("auto") {
            return Ok(MediaSpec::Nvme("auto".into()));
        }
        let Some(full) = drivers::storage::nvme::vfio::normalize_pci_address(rest) else {
            return Err(ServeError::Option(format!(
                "--media {s}: expected nvme:auto or nvme:<pci address> such as nvme:0000:00:04.0"
            )));
        };
        Ok(MediaSpec::Nvme(full))
    }
}

/// Every `--media` item (one per drive, in order), each parsed by [`MediaSpec::parse`]. A
/// file or controller named twice is refused (`nvme:auto` may be: each takes another
/// controller); so are more drives than reads can be routed to.
pub fn parse_media(items: &[String]) -> Result<Vec<MediaSpec>, ServeError> {
    if items.is_empty() {
        return Err(ServeError::Option("--media: no volume given".into()));
    }
    if items.len() > drivers::storage::drives::MAX_DRIVES {
        return Err(ServeError::Option(format!("--media: {} volumes, at most {}", items.len(), drivers::storage::drives::MAX_DRIVES)));
    }
    let mut specs: Vec<MediaSpec> = Vec::with_capacity(items.len());
    for item in items {
        let spec = MediaSpec::parse(item.trim())?;
        if spec != MediaSpec::Nvme("auto".into()) && specs.contains(&spec) {
            return Err(ServeError::Option(format!("--media: {} is listed twice", item.trim())));
        }
        specs.push(spec);
    }
    Ok(specs)
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("bad option: {0}")]
    Option(String),
    #[error("NIC: {0}")]
    Nic(#[from] drivers::nic::NicError),
    #[error("media: {0}")]
    Storage(#[from] drivers::storage::StorageError),
    #[error("media {spec}: {source}")]
    Media { spec: String, source: drivers::storage::StorageError },
    #[error("media volume: {0}")]
    Volume(#[from] volume::VolumeError),
    #[error("media volume {spec}: {source}")]
    MediaVolume { spec: String, source: volume::VolumeError },
    #[error("console: {0}")]
    Console(#[from] crate::console::ConsoleError),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// How `serve` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Poweroff,
    Reboot,
}

pub fn parse_ip_prefix(s: &str) -> Result<(Ipv4Addr, u8), ServeError> {
    let (ip, prefix) = s.split_once('/').unwrap_or((s, "24"));
    let ip: Ipv4Addr = ip.parse().map_err(|_| ServeError::Option(format!("--ip {s}: not an IPv4 address")))?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| ServeError::Option(format!("--ip {s}: bad prefix length")))?;
    Ok((ip, prefix))
}

pub fn parse_mac(s: &str) -> Result<[u8; 6], ServeError> {
    let mut mac = [0u8; 6];
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return Err(ServeError::Option(format!("--mac {s}: expected six hex bytes")));
    }
    for (m, p) in mac.iter_mut().zip(parts) {
        *m = u8::from_str_radix(p, 16).map_err(|_| ServeError::Option(format!("--mac {s}: bad byte {p:?}")))?;
    }
    if mac[0] & 1 != 0 {
        return Err(ServeError::Option(format!("--mac {s}: a multicast address")));
    }
    Ok(mac)
}

/// Parse a core list such as "0-3,6".
pub fn parse_cores(s: &str) -> Result<Vec<usize>, ServeError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || ServeError::Option(format!("--cores {s}: bad item {part:?}"));
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b || b > 4095 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err(ServeError::Option(format!("--cores {s}: empty")));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Monotonic nanoseconds since the process started.
pub fn monotonic_ns(start: std::time::Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

fn wall_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub fn serve(mut args: ServeArgs) -> Result<Outcome, ServeError> {
    let (ip, prefix) = parse_ip_prefix(&args.ip)?;
    let mac = args.mac.as_deref().map(parse_mac).transpose()?;
    let cores = match &args.cores {
        Some(c) => parse_cores(c)?,
        None => host::allowed_cores(),
    };
    // Loaded here so that a bad certificate is refused before anything starts.
    let files = args.tls_cert.as_deref().zip(args.tls_key.as_deref());
    args.tls = credentials::at_start(files, host::config_store().as_ref(), args.https_port, !args.no_tls_tickets, wall_unix() as i64)?.map(Box::new);
    if args.tls.is_some() && args.https_port == args.http_port {
        return Err(ServeError::Option(format!("--https-port {} is also the HTTP port", args.https_port)));
    }
    // Measured even while HTTPS is off: `tls install` may turn it on.
    let aead = match args.aead {
        Some(named) => crate::tls::AeadChoice::named(named),
        None => crate::tls::choice::measure_at_start(),
    };
    log::info!("TLS records are sealed with {}", aead.describe());
    *args.aead_choice = aead;
    let console = ConsoleService::open(&args.console)?;
    let net = Net { ip, prefix, mac };
    if let Some(name) = args.nic.strip_prefix("tap:") {
        let mut cores = cores;
        let multi = cores.len() > 1 && drivers::nic::tap::existing_multi_queue(name) != Some(false);
        if cores.len() > 1 && !multi {
            log::warn!("tap {name} was made without multi_queue (ip tuntap add ... multi_queue): one pipeline, on core {}", cores[0]);
            cores.truncate(1);
        }
        let nic = |_: usize| -> Result<_, ServeError> {
            Ok(if multi { drivers::nic::tap::TapNic::open_queue(name, true)? } else { drivers::nic::tap::TapNic::open(name)? })
        };
        with_media(args.clone(), &nic, net, cores, console)
    } else if let Some(name) = args.nic.strip_prefix("packet:") {
        // One socket per core in a fanout group: the kernel keeps each flow on one of them.
        let group = (cores.len() > 1).then(|| (std::process::id() & 0xffff) as u16);
        let nic = |_: usize| -> Result<_, ServeError> { Ok(drivers::nic::packet::PacketNic::open_in_group(name, group)?) };
        with_media(args.clone(), &nic, net, cores, console)
    } else if args.nic == "dpdk" {
        start_dpdk(&args, net, cores, console)
    } else {
        Err(ServeError::Option(format!("--nic {}: expected tap:<ifname>, packet:<ifname> or dpdk", args.nic)))
    }
}

/// The stack's addresses from the command line.
#[derive(Clone, Copy, Debug)]
struct Net {
    ip: Ipv4Addr,
    prefix: u8,
    mac: Option<[u8; 6]>,
}

/// Why each drive of `--media` is not served (None: it is), decided at start-up.
type Failed = std::sync::Mutex<Vec<Option<String>>>;

fn lock_failed(failed: &Failed) -> std::sync::MutexGuard<'_, Vec<Option<String>>> {
    failed.lock().unwrap_or_else(|e| e.into_inner())
}

/// Builds pipeline `index`'s NIC queue (or storage queue), called on that pipeline's own
/// thread: queues own per-core pools that never cross threads.
type QueueFn<'a, T> = dyn Fn(usize) -> Result<T, ServeError> + Sync + 'a;

/// Opens the media's queues (one per core on each drive) and runs the pipelines on `nic`'s
/// queues.
fn with_media<N: Nic>(args: ServeArgs, nic: &QueueFn<N>, net: Net, cores: Vec<usize>, console: ConsoleService) -> Result<Outcome, ServeError> {
    let specs = parse_media(&args.media)?;
    let names: Vec<String> = args.media.iter().map(|m| m.trim().to_string()).collect();
    let media_err = |drive: usize, source| ServeError::Media { spec: names[drive].clone(), source };
    // With several drives, one that cannot be opened (or its volume loaded, in run) is left
    // out, logged and shown by the console, and the others are served; with one, that ends
    // serve as it always did.
    let several = specs.len() > 1;
    let failed: Failed = std::sync::Mutex::new(vec![None; specs.len()]);
    let leave_out = |d: usize, e: drivers::storage::StorageError| -> Result<(), ServeError> {
        if !several {
            return Err(media_err(d, e));
        }
        log::error!("media {}: {e}: this drive is not served", names[d]);
        lock_failed(&failed)[d] = Some(e.to_string());
        Ok(())
    };
    // NVMe drives: one vfio container for all, so that one buffer pool per core serves every
    // drive; the controllers named first, so that nvme:auto takes another one.
    let mut nvme: Vec<Option<Vec<std::sync::Mutex<Option<drivers::storage::nvme::NvmeQueue>>>>> = specs.iter().map(|_| None).collect();
    let mut detail = vec![None; specs.len()];
    let mut found = names.clone();
    let mut taken: Vec<String> = Vec::new();
    for spec in &specs {
        if let MediaSpec::Nvme(pci) = spec {
            if pci != "auto" {
                taken.push(pci.clone());
            }
        }
    }
    let mut order: Vec<usize> = (0..specs.len()).filter(|&d| matches!(&specs[d], MediaSpec::Nvme(p) if p != "auto")).collect();
    order.extend((0..specs.len()).filter(|&d| specs[d] == MediaSpec::Nvme("auto".into())));
    let mut container: Option<std::sync::Arc<drivers::storage::nvme::vfio::Container>> = None;
    for d in order {
        let MediaSpec::Nvme(spec) = &specs[d] else { continue };
        let opened = match &container {
            Some(c) => Ok(c.clone()),
            None => drivers::storage::nvme::vfio::Container::open().inspect(|c| container = Some(c.clone())),
        }
        .and_then(|c| open_nvme(&c, spec, cores.len(), &taken));
        let (queues, pci, text) = match opened {
            Ok(o) => o,
            Err(e) => {
                leave_out(d, e)?;
                continue;
            }
        };
        found[d] = format!("nvme:{pci}");
        if spec == "auto" {
            taken.push(pci);
        }
        nvme[d] = Some(queues.into_iter().map(|q| std::sync::Mutex::new(Some(q))).collect());
        detail[d] = Some(text);
    }
    let storage = |core: usize| -> Result<Drives<Backend>, ServeError> {
        let mut drives = Vec::with_capacity(specs.len());
        for (d, spec) in specs.iter().enumerate() {
            if let Some(reason) = lock_failed(&failed)[d].clone() {
                drives.push(Backend::Unavailable(Unavailable::new(reason)));
                continue;
            }
            drives.push(match spec {
                MediaSpec::File(path) => match drivers::storage::FileStorage::open(path) {
                    Ok(f) => Backend::File(f),
                    // Decided on the first core, before the others start.
                    Err(e) if several && core == 0 => {
                        log::error!("media {}: {e}: this drive is not served", names[d]);
                        lock_failed(&failed)[d] = Some(e.to_string());
                        Backend::Unavailable(Unavailable::new(e.to_string()))
                    }
                    Err(e) => return Err(media_err(d, e)),
                },
                MediaSpec::Nvme(_) => {
                    let queue = nvme[d].as_ref().and_then(|qs| qs.get(core)).and_then(|q| q.lock().unwrap_or_else(|e| e.into_inner()).take());
                    let queue = queue.ok_or_else(|| media_err(d, drivers::storage::StorageError::Device(format!("no I/O queue pair for pipeline {core}"))))?;
                    Backend::Nvme(queue.into_storage())
                }
            });
        }
        Drives::new(drives).map_err(|e| ServeError::Option(format!("--media: {e}")))
    };
    let args = ServeArgs { media: names.clone(), media_detail: detail, media_found: found, ..args };
    run(args, nic, &storage, &failed, net, cores, console)
}

/// Namespace 1 of the NVMe controller `spec` ("auto": the first free one not in `taken`, or a
/// PCI address) opened in `container`, with one I/O queue pair per pipeline; its PCI address
/// and a description of what was found.
fn open_nvme(
    container: &std::sync::Arc<drivers::storage::nvme::vfio::Container>,
    spec: &str,
    pipelines: usize,
    taken: &[String],
) -> Result<(Vec<drivers::storage::nvme::NvmeQueue>, String, String), drivers::storage::StorageError> {
    use drivers::storage::nvme::{self, NvmeConfig};
    let config = NvmeConfig { io_queues: pipelines.max(1), ..NvmeConfig::default() };
    let ctrl = nvme::open_in(container, spec, &config, taken)?;
    let (info, ns) = (ctrl.info().clone(), ctrl.namespace());
    let detail = format!(
        "nvme:{} ({}, serial {}, NVMe {}, namespace {}: {} blocks of {} bytes)",
        info.pci,
        info.model,
        info.serial,
        info.version,
        ns.nsid,
        ns.blocks,
        ns.lba_size
    );
    log::info!("media: {detail}");
    let queues = ctrl.into_queues()?;
    if queues.len() < pipelines {
        return Err(drivers::storage::StorageError::Device(format!("the controller created {} I/O queue pair(s) for {pipelines} pipeline(s)", queues.len())));
    }
    Ok((queues, info.pci, detail))
}

#[cfg(feature = "dpdk")]
fn start_dpdk(args: &ServeArgs, net: Net, mut cores: Vec<usize>, console: ConsoleService) -> Result<Outcome, ServeError> {
    use drivers::nic::dpdk::{DpdkConfig, DpdkNic};
    let wanted = u16::try_from(cores.len()).map_err(|_| ServeError::Option("--cores: too many for DPDK's queue count".into()))?;
    let first = DpdkNic::start(&args.dpdk_args, DpdkConfig { queues: wanted, ..DpdkConfig::default() })?;
    // The port may have given fewer queues (no RSS): as many pipelines as queues.
    cores.truncate(usize::from(first.queues()));
    let others = (1..first.queues()).map(|q| first.queue(q)).collect::<Result<Vec<_>, _>>()?;
    let handles: Vec<_> = std::iter::once(first).chain(others).map(|h| std::sync::Mutex::new(Some(h))).collect();
    let nic = |i: usize| {
        handles
            .get(i)
            .and_then(|h| h.lock().unwrap_or_else(|e| e.into_inner()).take())
            .ok_or_else(|| ServeError::Option(format!("no DPDK queue for pipeline {i}")))
    };
    with_media(args.clone(), &nic, net, cores, console)
}

#[cfg(not(feature = "dpdk"))]
fn start_dpdk(_args: &ServeArgs, _net: Net, _cores: Vec<usize>, _console: ConsoleService) -> Result<Outcome, ServeError> {
    Err(ServeError::Option("--nic dpdk: this binary was built without the `dpdk` feature (cargo build --features dpdk)".into()))
}

/// Fewest storage buffers a core takes (`--buffers`, `appliance.buffers`): two connections'
/// chunks.
pub const MIN_BUFFERS: usize = 4;
/// Most storage buffers a core takes: 4 GiB.
pub const MAX_BUFFERS: usize = 8192;

/// A storage buffer count as `--buffers` and `appliance.buffers` take it.
pub fn parse_buffers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if (MIN_BUFFERS..=MAX_BUFFERS).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of buffers {MIN_BUFFERS}..={MAX_BUFFERS}, not {s:?}")),
    }
}

/// Storage buffers per core by default ([`ServeArgs::buffers`]): fewer seal faster (what was
/// just read is still in the caches: 4 MiB against 32 MiB a core measured 1.2x to 1.4x at
/// 100 and 10,000 connections, docs/performance.md).
pub const BUFFERS: usize = 8;
/// With DPDK: the PMD may hold sent buffers until its ring runs low (32 MiB a core).
pub const DPDK_BUFFERS: usize = 64;

/// What every pipeline is built from.
struct Setup {
    cfg: IfaceConfig,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    https_port: u16,
    buffers: usize,
    header_timeout: u64,
    tls_emulation: bool,
    aead: crate::tls::AeadImpl,
    start: std::time::Instant,
}

impl Setup {
    fn pipeline<N: Nic, S: Storage>(&self, mut nic: N, storage: S, library: std::sync::Arc<volume::Library>, board: &Board) -> Result<Pipeline<N, S>, ServeError> {
        // Every queue is the same port: the first queue's link settings hold for all.
        let stack = Stack::new(self.cfg.clone(), monotonic_ns(self.start));
        let mut app = HttpApp::new(storage, library, self.buffers, self.cfg.max_conns)?;
        app.header_timeout = self.header_timeout;
        app.seal_with(self.aead);
        if let Some(config) = &self.tls {
            app.enable_tls(config.clone(), self.https_port);
        }
        app.follow_tls(board.tls.clone());
        if self.tls_emulation {
            app.enable_tls_emulation()?;
        }
        // Payload in this core's storage buffers may go out without copying (DPDK).
        nic.tx_from_pool(app.pool());
        Ok(Pipeline::new(nic, stack, app))
    }
}

/// Loads the volume of each drive (`names`: their `--media` items) and merges the indexes.
/// With several drives, one already `failed` or whose volume does not load is left out
/// (marked in `failed`, made [`Unavailable`]) as long as another one loads.
fn load_library(names: &[String], drives: &mut Drives<Backend>, failed: &Failed) -> Result<volume::Library, ServeError> {
    let several = drives.len() > 1;
    let mut volumes = Vec::with_capacity(drives.len());
    let mut first_error = None;
    for (d, name) in names.iter().enumerate().take(drives.len()) {
        if let Some(reason) = lock_failed(failed)[d].clone() {
            volumes.push((name.clone(), Err(reason)));
            continue;
        }
        let Some(drive) = drives.drive_mut(d) else { break };
        match volume::load(drive) {
            Ok(vol) => {
                log::info!("media {name} ({}): {} objects, {} bytes", drive.backend(), vol.objects().len(), vol.data_bytes());
                volumes.push((name.clone(), Ok(vol)));
            }
            Err(source) => {
                let e = ServeError::MediaVolume { spec: name.clone(), source };
                if !several {
                    return Err(e);
                }
                log::error!("{e}: this drive is not served");
                let reason = e.to_string();
                lock_failed(failed)[d] = Some(reason.clone());
                drives.replace(d, Backend::Unavailable(Unavailable::new(reason.clone())));
                first_error.get_or_insert(e);
                volumes.push((name.clone(), Err(reason)));
            }
        }
    }
    if volumes.iter().all(|(_, v)| v.is_err()) {
        return Err(first_error.unwrap_or_else(|| {
            let reasons: Vec<String> = volumes.iter().filter_map(|(_, v)| v.as_ref().err().cloned()).collect();
            ServeError::Option(format!("--media: no drive can be served: {}", reasons.join("; ")))
        }));
    }
    let library = volume::Library::with_failed(volumes);
    const SHOWN: usize = 20;
    for p in library.shadowed().iter().take(SHOWN) {
        log::warn!(
            "media: {} is on {} (drive {}) and on {} (drive {}): served from {}",
            p.path,
            names[p.served_from],
            p.served_from,
            names[p.hidden_on],
            p.hidden_on,
            names[p.served_from]
        );
    }
    if library.shadowed().len() > SHOWN {
        log::warn!("media: {} more paths on more than one drive (the console's media lists them)", library.shadowed().len() - SHOWN);
    }
    if several {
        let serving = library.drives().iter().filter(|d| d.failed.is_none()).count();
        log::info!("media: {serving} of {} drives, {} objects, {} bytes served", drives.len(), library.len(), library.data_bytes());
    }
    Ok(library)
}

/// Pins the calling thread; a failure is logged, not fatal (the pipeline still runs).
fn pin(core: usize) {
    if let Err(e) = host::pin_to_core(core) {
        log::warn!("cannot pin to core {core}: {e}");
    }
}

/// Loads every drive's volume, then runs one pipeline per core: the first on this thread with
/// the console, each other on its own pinned thread. Returns when the console asks for it.
fn run<N: Nic>(
    args: ServeArgs,
    nic: &QueueFn<N>,
    storage: &QueueFn<Drives<Backend>>,
    failed: &Failed,
    net: Net,
    cores: Vec<usize>,
    mut console: ConsoleService,
) -> Result<Outcome, ServeError> {
    let cores = if cores.is_empty() { vec![0] } else { cores };
    pin(cores[0]);
    // Every core's queue takes the port's receive checksum verdicts, or with
    // --no-rx-offload leaves every checksum to its core.
    let rx_offload = !args.no_rx_offload;
    let with_rx_offload = |i: usize| -> Result<N, ServeError> {
        let mut queue = nic(i)?;
        queue.set_rx_checksum_offload(rx_offload);
        Ok(queue)
    };
    let nic = &with_rx_offload;
    let first_nic = nic(0)?;
    let mut first_storage = storage(0)?;
    let vol = std::sync::Arc::new(load_library(&args.media, &mut first_storage, failed)?);
    let mut link = first_nic.link();
    if args.no_tx_offload {
        link.offloads = drivers::nic::TxOffloads::default();
    }
    let start = std::time::Instant::now();
    let mut cfg = IfaceConfig::new(net.mac.unwrap_or(link.mac), net.ip.octets(), net.prefix);
    cfg.gateway = args.gateway.map(|g| g.octets());
    cfg.use_link(&link);
    cfg.tcp.congestion = args.congestion.unwrap_or(cfg.tcp.congestion);
    cfg.tcp.pacing = (cfg.tcp.pacing || args.pacing) && !args.no_pacing;
    cfg.listen_ports = vec![args.http_port];
    let tls = args.tls.as_ref().map(|t| t.config.clone());
    if tls.is_some() {
        cfg.listen_ports.push(args.https_port);
    }
    cfg.max_conns = args.max_connections.max(16);
    cfg.idle_timeout = args.idle_timeout.max(1) * SEC;
    let setup = Setup {
        cfg,
        tls,
        https_port: args.https_port,
        buffers: args.buffers.unwrap_or(if args.nic == "dpdk" { DPDK_BUFFERS } else { BUFFERS }),
        header_timeout: args.header_timeout * SEC,
        tls_emulation: args.tls_emulation,
        aead: args.aead_choice.chosen,
        start,
    };
    if args.tls_emulation {
        log::warn!("--tls-emulation: HTTP bodies are sealed with a public dummy key (benchmarks only, no protection)");
    }
    let board = Board::new(&cores);
    std::thread::scope(|scope| {
        // Every core builds its pipeline at once (mapping its buffer pool is most of a
        // start-up), and none serves until all are built: a core that cannot start stops the
        // whole start-up with nothing left running.
        let mut others = Vec::new();
        let mut failure = None;
        for (index, &core) in cores.iter().enumerate().skip(1) {
            let (ready, built_rx) = std::sync::mpsc::channel::<Result<(), String>>();
            let (go_tx, go) = std::sync::mpsc::channel::<bool>();
            let (setup, board, vol) = (&setup, &board, vol.clone());
            let thread = std::thread::Builder::new().name(format!("pipeline-{core}")).spawn_scoped(scope, move || {
                pin(core);
                let built = nic(index).and_then(|n| Ok((n, storage(index)?))).and_then(|(n, s)| setup.pipeline(n, s, vol, board));
                match built {
                    Ok(mut pipe) => {
                        let _ = ready.send(Ok(()));
                        // A closed channel (the start-up failed) is a no.
                        if go.recv() == Ok(true) {
                            run_pipeline(&mut pipe, board, index, start, None)
                        } else {
                            None
                        }
                    }
                    Err(e) => {
                        let _ = ready.send(Err(e.to_string()));
                        None
                    }
                }
            });
            match thread {
                Ok(t) => others.push((core, t, built_rx, go_tx)),
                Err(e) => {
                    failure = Some(ServeError::Option(format!("cannot start the pipeline of core {core}: {e}")));
                    break;
                }
            }
        }
        // The first core's pipeline, built here meanwhile; then the start-up's first error.
        let mut first = match failure {
            Some(e) => Err(e),
            None => setup.pipeline(first_nic, first_storage, vol.clone(), &board),
        };
        for (core, _, built, _) in &others {
            let error = match built.recv() {
                Ok(Ok(())) => continue,
                Ok(Err(e)) => ServeError::Option(format!("pipeline on core {core}: {e}")),
                Err(_) => ServeError::Option(format!("the pipeline of core {core} ended while starting")),
            };
            if first.is_ok() {
                first = Err(error);
            }
        }
        for (_, _, _, go_tx) in &others {
            let _ = go_tx.send(first.is_ok());
        }
        let mut pipe = match first {
            Ok(pipe) => pipe,
            Err(e) => {
                board.stop();
                return Err(e);
            }
        };
        // The port's one address, announced once (by the first core) as soon as it serves.
        pipe.stack.announce(monotonic_ns(start), 2);
        let mut host = host::Host::new(&args, net.ip, net.prefix, cores.clone(), start);
        log::info!(
            "serving http://{}:{}{} on {} ({}), mac {}, {} pipeline(s) on core(s) {:?}",
            net.ip,
            args.http_port,
            if args.tls.is_some() { format!(" and https://{}:{}", net.ip, args.https_port) } else { String::new() },
            args.nic,
            link.driver,
            host::format_mac(&pipe.stack.cfg.mac),
            cores.len(),
            cores
        );
        let outcome = run_pipeline(&mut pipe, &board, 0, start, Some((&mut host, &mut console)));
        board.stop();
        for (_, t, _, _) in others {
            if t.join().is_err() {
                log::error!("a pipeline thread panicked");
            }
        }
        outcome.ok_or_else(|| ServeError::Option("the pipeline stopped".into()))
    })
}

/// How long a loop with no connection waits for a frame: nothing of its own is due before one
/// comes (no connection, no timer, no read, no handshake), and a frame ends the wait at once;
/// what comes from elsewhere (a console line, a certificate installed, a stop, a writer
/// breaking the volume's lease) waits at most this long. An idle appliance on TAP or AF_PACKET
/// then wakes 100 times a second instead of 1,000 (about 0.3% of a core instead of 3%).
pub const WAIT_WITHOUT_CONNECTIONS: Duration = Duration::from_millis(10);

/// One core's loop until the board says stop (or, on the console's core, until the console
/// asks for power off or reboot). Once a millisecond at most (and at every wake from a wait)
/// it follows a drain, and polls the console on the first core or publishes its counters for
/// it on the others, before it polls the NIC, so that a core woken by a new client takes a
/// certificate installed meanwhile first.
fn run_pipeline<N: Nic, S: Storage>(
    pipe: &mut Pipeline<N, S>,
    board: &Board,
    index: usize,
    start: std::time::Instant,
    mut console: Option<(&mut host::Host, &mut ConsoleService)>,
) -> Option<Outcome> {
    let core = board.core_of(index);
    // The certificate generation this core serves (`tls install` publishes newer ones).
    let mut tls_seen = 0;
    let mut last_tick: Option<u64> = None;
    loop {
        let now = monotonic_ns(start);
        // Not free (the console's system calls, the counters' publication): once a
        // millisecond, busy or not. An idle loop also comes round at least that often (it
        // waits for the NIC for at most a millisecond, or WAIT_WITHOUT_CONNECTIONS), and a
        // loop between bursts of a transfer comes round far more often: polling at each of
        // those turns cost the served bytes a system call or three each.
        if last_tick.is_none_or(|t| now - t >= crate::net::MS) {
            last_tick = Some(now);
            // The Date of responses: seconds, read once a tick (a vDSO call).
            pipe.app.wall_unix = wall_unix();
            if board.draining() && !pipe.app.draining {
                pipe.drain();
            }
            if let Some((host, console)) = console.as_mut() {
                let mut view = host.view(pipe, board);
                console.poll(&mut view, 8);
                if let Some(action) = host.power.take() {
                    console.flush_for(Duration::from_secs(2));
                    return Some(match action {
                        PowerAction::Poweroff => Outcome::Poweroff,
                        PowerAction::Reboot => Outcome::Reboot,
                    });
                }
            } else {
                // The console's own core is read live; the others publish for it, and take
                // a certificate the console installed.
                pipe.publish(board, index, core, now);
                if let Some((config, port)) = board.tls.update(&mut tls_seen) {
                    pipe.adopt_tls(config, port);
                }
                if board.stopped() {
                    return None;
                }
            }
        }
        let turn = pipe.poll(now);
        if let Some(wait) = wait_after(turn, pipe.stack.connection_count()) {
            pipe.nic.wait_rx(wait);
        }
    }
}

/// How long the loop may wait for a frame after `turn`, with `connections` in the table: not
/// at all when it must go round again at once; a millisecond (the timers' tick) while there
/// are connections; [`WAIT_WITHOUT_CONNECTIONS`] without.
fn wait_after(turn: pipeline::Turn, connections: usize) -> Option<Duration> {
    if turn.busy() {
        None
    } else if connections > 0 {
        Some(Duration::from_millis(1))
    } else {
        Some(WAIT_WITHOUT_CONNECTIONS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_waits_long_only_without_connections_and_work() {
        let idle = pipeline::Turn { worked: false, reads_in_flight: false, handshakes_queued: false };
        assert_eq!(wait_after(idle, 0), Some(WAIT_WITHOUT_CONNECTIONS));
        assert_eq!(wait_after(idle, 1), Some(Duration::from_millis(1)), "timers tick each millisecond");
        for busy in [
            pipeline::Turn { worked: true, ..idle },
            pipeline::Turn { reads_in_flight: true, ..idle },
            pipeline::Turn { handshakes_queued: true, ..idle },
        ] {
            assert_eq!(wait_after(busy, 0), None, "{busy:?}");
            assert_eq!(wait_after(busy, 5), None, "{busy:?}");
        }
    }

    #[test]
    fn media_specs_parse() {
        assert_eq!(MediaSpec::parse("/dev/nvme0n1").unwrap(), MediaSpec::File("/dev/nvme0n1".into()));
        assert_eq!(MediaSpec::parse("media.vol").unwrap(), MediaSpec::File("media.vol".into()));
        assert_eq!(MediaSpec::parse("nvme:auto").unwrap(), MediaSpec::Nvme("auto".into()));
        assert_eq!(MediaSpec::parse("nvme:AUTO").unwrap(), MediaSpec::Nvme("auto".into()));
        assert_eq!(MediaSpec::parse("nvme:0000:00:04.0").unwrap(), MediaSpec::Nvme("0000:00:04.0".into()));
        assert_eq!(MediaSpec::parse("nvme:00:1F.7").unwrap(), MediaSpec::Nvme("0000:00:1f.7".into()));
        assert_eq!(MediaSpec::parse("nvme:10000:3a:00.0").ok(), None, "5-digit domains are not PCI addresses here");
        for bad in ["nvme:", "nvme:04.0", "nvme:0000:00:04.8", "nvme:0000:00:04", "nvme:zz:00.0", ""] {
            let e = MediaSpec::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--media"), "{bad:?}: {e}");
        }
        assert!(MediaSpec::parse("nvme:0000:00:04.8").unwrap_err().to_string().contains("nvme:auto"));
    }

    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn media_of(argv: &[&str]) -> Result<Vec<String>, clap::Error> {
        let mut full = vec!["serve", "--nic", "tap:t0", "--ip", "10.0.0.2/24"];
        full.extend_from_slice(argv);
        <Serve as clap::Parser>::try_parse_from(full).map(|s| s.args.media)
    }

    #[test]
    fn buffers_are_bounded_on_the_command_line() {
        let buffers = |n: &str| {
            let full = ["serve", "--nic", "tap:t0", "--ip", "10.0.0.2/24", "--media", "a.vol", "--buffers", n];
            <Serve as clap::Parser>::try_parse_from(full).map(|s| s.args.buffers)
        };
        assert_eq!(buffers("4").unwrap(), Some(4));
        assert_eq!(buffers("8192").unwrap(), Some(8192));
        for bad in ["3", "8193", "0", "many"] {
            let e = buffers(bad).unwrap_err().to_string();
            assert!(e.contains("4..=8192"), "{bad}: {e}");
        }
    }

    #[test]
    fn media_is_one_volume_or_a_list() {
        assert_eq!(media_of(&["--media", "a.vol"]).unwrap(), ["a.vol"]);
        assert_eq!(media_of(&["--media", "a.vol,nvme:0000:00:04.0"]).unwrap(), ["a.vol", "nvme:0000:00:04.0"]);
        assert_eq!(media_of(&["--media", "a.vol", "--media", "b.vol,c.vol"]).unwrap(), ["a.vol", "b.vol", "c.vol"]);
        assert!(media_of(&[]).is_err(), "--media is required");
        let specs = parse_media(&["a.vol".into(), " nvme:00:04.0".into(), "nvme:auto".into(), "nvme:auto".into()]).unwrap();
        assert_eq!(
            specs,
            [
                MediaSpec::File("a.vol".into()),
                MediaSpec::Nvme("0000:00:04.0".into()),
                MediaSpec::Nvme("auto".into()),
                MediaSpec::Nvme("auto".into())
            ],
            "nvme:auto may be given more than once: each takes another controller"
        );
        for (bad, why) in [
            (vec!["a.vol", "b.vol", "a.vol"], "a.vol is listed twice"),
            (vec!["nvme:0000:00:04.0", "nvme:00:04.0"], "listed twice"),
            (vec!["a.vol", ""], "--media: empty"),
            (vec![], "no volume"),
        ] {
            let items: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            let e = parse_media(&items).unwrap_err().to_string();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let many: Vec<String> = (0..=drivers::storage::drives::MAX_DRIVES).map(|i| format!("{i}.vol")).collect();
        assert!(parse_media(&many).unwrap_err().to_string().contains("at most 256"));
    }

    #[test]
    fn a_drive_whose_volume_does_not_load_is_left_out_when_others_load() {
        let (_d, _s, _v) = crate::loopback::volume_of(&[("a.txt", b"a")]);
        let good = _d.path().join("media.vol");
        let junk = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(junk.path(), vec![0x5a; 3 * 4096]).unwrap();
        let junk_name = junk.path().display().to_string();
        let open = |p: &std::path::Path| Backend::File(drivers::storage::FileStorage::open(p).unwrap());
        let names = vec![good.display().to_string(), junk_name.clone()];
        let failed: Failed = std::sync::Mutex::new(vec![None, None]);
        let mut drives = Drives::new(vec![open(&good), open(junk.path())]).unwrap();
        let library = load_library(&names, &mut drives, &failed).unwrap();
        assert_eq!(library.lookup("/a.txt").unwrap().drive, 0);
        let why = library.drives()[1].failed.clone().expect("drive 1 left out");
        assert!(why.starts_with(&format!("media volume {junk_name}: not a media volume")), "{why}");
        assert_eq!(lock_failed(&failed)[1].as_deref(), Some(why.as_str()), "the other cores leave it out too");
        assert_eq!(drives.drive_backend(1), drivers::storage::drives::UNAVAILABLE);
        assert_eq!(drives.backend(), "file");
        // One volume that does not load ends serve, as it always did; so do several of them.
        let failed: Failed = std::sync::Mutex::new(vec![None]);
        let mut one = Drives::new(vec![open(junk.path())]).unwrap();
        let e = load_library(&names[1..], &mut one, &failed).unwrap_err();
        assert!(matches!(e, ServeError::MediaVolume { .. }), "{e}");
        let failed: Failed = std::sync::Mutex::new(vec![None, Some("no such controller".into())]);
        let mut two = Drives::new(vec![open(junk.path()), Backend::Unavailable(Unavailable::new("no such controller"))]).unwrap();
        let e = load_library(&[junk_name.clone(), "nvme:auto".into()], &mut two, &failed).unwrap_err();
        assert!(e.to_string().contains("not a media volume"), "{e}");
    }

    #[test]
    fn media_errors_name_the_spec() {
        let e = ServeError::Media {
            spec: "nvme:auto".into(),
            source: drivers::storage::StorageError::Device("nvme:auto: no NVMe controller found".into()),
        };
        assert_eq!(e.to_string(), "media nvme:auto: device error: nvme:auto: no NVMe controller found");
    }
}
