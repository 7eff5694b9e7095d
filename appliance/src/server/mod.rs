//! `appliance serve`: builds a pipeline from the command-line settings (NIC backend, media,
//! addresses, ports) and runs it, with the management console polled on the first core.
pub mod host;
pub mod http_app;
pub mod pipeline;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drivers::nic::Nic;
use drivers::storage::Storage;

use crate::console::{ConsoleService, PowerAction};
use crate::net::iface::{IfaceConfig, Stack};
use crate::net::SEC;
use crate::volume;
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
    #[arg(long, default_value = "")]
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
    /// controller that no kernel driver holds.
    #[arg(long, value_name = "PATH | nvme:<pci address> | nvme:auto")]
    pub media: String,
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
    /// Cores to run pipelines on, e.g. "0-3" or "1,3" (default: every allowed core).
    #[arg(long)]
    pub cores: Option<String>,
    /// Management console: `stdio`, a tty such as /dev/ttyS0, or `unix:<path>`; `,echo` echoes input.
    #[arg(long, default_value = "stdio")]
    pub console: String,
    /// Most connections per core.
    #[arg(long, default_value_t = 16384)]
    pub max_connections: usize,
    /// 64 KiB storage buffers per core: bounds the data in flight.
    #[arg(long, default_value_t = 512)]
    pub buffers: usize,
    /// Seconds a connection may stay silent before it is closed.
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
    /// What the media turned out to be (the NVMe controller `nvme:auto` found), for `status`.
    #[arg(skip)]
    pub media_detail: Option<String>,
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

pub fn serve(args: ServeArgs) -> Result<Outcome, ServeError> {
    let (ip, prefix) = parse_ip_prefix(&args.ip)?;
    let mac = args.mac.as_deref().map(parse_mac).transpose()?;
    let cores = match &args.cores {
        Some(c) => parse_cores(c)?,
        None => host::allowed_cores(),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        // Checked here so that a bad certificate is refused before anything starts.
        crate::tls::handshake::load_server_config(cert, key)?;
    }
    let console = ConsoleService::open(&args.console)?;
    let media_err = |source| ServeError::Media { spec: args.media.clone(), source };
    match MediaSpec::parse(&args.media)? {
        MediaSpec::File(path) => {
            let storage = drivers::storage::FileStorage::open(&path).map_err(media_err)?;
            start(args, storage, ip, prefix, mac, cores, console)
        }
        MediaSpec::Nvme(spec) => {
            let (storage, detail) = open_nvme(&spec).map_err(media_err)?;
            let args = ServeArgs { media_detail: Some(detail), ..args };
            start(args, storage, ip, prefix, mac, cores, console)
        }
    }
}

/// Namespace 1 of the NVMe controller `spec` ("auto" or a PCI address) as one I/O queue
/// pair for the pipeline, and a description of what was found.
fn open_nvme(spec: &str) -> Result<(drivers::storage::nvme::NvmeStorage, String), drivers::storage::StorageError> {
    use drivers::storage::nvme::{self, NvmeConfig};
    let ctrl = nvme::open(spec, &NvmeConfig::default())?;
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
    let queue = ctrl
        .into_queues()?
        .into_iter()
        .next()
        .ok_or_else(|| drivers::storage::StorageError::Device("the controller created no I/O queue".into()))?;
    Ok((queue.into_storage(), detail))
}

/// Load the volume from `storage` and run the pipeline on the NIC `--nic` names.
#[allow(clippy::too_many_arguments)]
fn start<S: Storage>(
    args: ServeArgs,
    mut storage: S,
    ip: Ipv4Addr,
    prefix: u8,
    mac: Option<[u8; 6]>,
    cores: Vec<usize>,
    console: ConsoleService,
) -> Result<Outcome, ServeError> {
    let vol = volume::load(&mut storage)?;
    log::info!(
        "media {} ({}): {} objects, {} bytes",
        args.media,
        storage.backend(),
        vol.objects().len(),
        vol.data_bytes()
    );
    if let Some(name) = args.nic.strip_prefix("tap:") {
        let nic = drivers::nic::tap::TapNic::open(name)?;
        run(args.clone(), nic, storage, vol, ip, prefix, mac, cores, console)
    } else if let Some(name) = args.nic.strip_prefix("packet:") {
        let nic = drivers::nic::packet::PacketNic::open(name)?;
        run(args.clone(), nic, storage, vol, ip, prefix, mac, cores, console)
    } else if args.nic == "dpdk" {
        start_dpdk(&args, storage, vol, ip, prefix, mac, cores, console)
    } else {
        Err(ServeError::Option(format!("--nic {}: expected tap:<ifname>, packet:<ifname> or dpdk", args.nic)))
    }
}

#[cfg(feature = "dpdk")]
#[allow(clippy::too_many_arguments)]
fn start_dpdk<S: Storage>(
    args: &ServeArgs,
    storage: S,
    vol: volume::Volume,
    ip: Ipv4Addr,
    prefix: u8,
    mac: Option<[u8; 6]>,
    cores: Vec<usize>,
    console: ConsoleService,
) -> Result<Outcome, ServeError> {
    use drivers::nic::dpdk::{DpdkConfig, DpdkNic};
    let nic = DpdkNic::start(&args.dpdk_args, DpdkConfig::default())?;
    run(args.clone(), nic, storage, vol, ip, prefix, mac, cores, console)
}

#[cfg(not(feature = "dpdk"))]
#[allow(clippy::too_many_arguments)]
fn start_dpdk<S: Storage>(
    _args: &ServeArgs,
    _storage: S,
    _vol: volume::Volume,
    _ip: Ipv4Addr,
    _prefix: u8,
    _mac: Option<[u8; 6]>,
    _cores: Vec<usize>,
    _console: ConsoleService,
) -> Result<Outcome, ServeError> {
    Err(ServeError::Option("--nic dpdk: this binary was built without the `dpdk` feature (cargo build --features dpdk)".into()))
}

#[allow(clippy::too_many_arguments)]
fn run<N: Nic, S: Storage>(
    args: ServeArgs,
    nic: N,
    storage: S,
    vol: volume::Volume,
    ip: Ipv4Addr,
    prefix: u8,
    mac: Option<[u8; 6]>,
    cores: Vec<usize>,
    mut console: ConsoleService,
) -> Result<Outcome, ServeError> {
    let mut link = nic.link();
    if args.no_tx_offload {
        link.offloads = drivers::nic::TxOffloads::default();
    }
    let start = std::time::Instant::now();
    let now = monotonic_ns(start);
    let mut cfg = IfaceConfig::new(mac.unwrap_or(link.mac), ip.octets(), prefix);
    cfg.gateway = args.gateway.map(|g| g.octets());
    cfg.use_link(&link);
    cfg.tcp.congestion = args.congestion.unwrap_or(cfg.tcp.congestion);
    cfg.tcp.pacing = (cfg.tcp.pacing || args.pacing) && !args.no_pacing;
    cfg.listen_ports = vec![args.http_port];
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => {
            if args.https_port == args.http_port {
                return Err(ServeError::Option(format!("--https-port {} is also the HTTP port", args.https_port)));
            }
            cfg.listen_ports.push(args.https_port);
            Some(crate::tls::handshake::load_server_config(cert, key)?)
        }
        _ => None,
    };
    cfg.max_conns = args.max_connections.max(16);
    cfg.idle_timeout = args.idle_timeout.max(1) * SEC;
    // One pipeline for now: the first core of the list (RSS across cores comes with DPDK).
    if let Some(&core) = cores.first() {
        if let Err(e) = host::pin_to_core(core) {
            log::warn!("cannot pin to core {core}: {e}");
        }
    }
    let stack = Stack::new(cfg, now);
    let mut app = HttpApp::new(storage, vol, args.buffers.max(4))?;
    app.header_timeout = args.header_timeout * SEC;
    if let Some(config) = tls {
        app.enable_tls(config, args.https_port);
    }
    let mut pipe = Pipeline::new(nic, stack, app);
    let mut host = host::Host::new(&args, ip, prefix, cores, start);
    log::info!(
        "serving http://{ip}:{}{} on {} ({}), mac {}",
        args.http_port,
        if args.tls_cert.is_some() { format!(" and https://{ip}:{}", args.https_port) } else { String::new() },
        args.nic,
        link.driver,
        host::format_mac(&pipe.stack.cfg.mac)
    );
    let mut iter: u64 = 0;
    let mut last_console = 0u64;
    loop {
        let now = monotonic_ns(start);
        if iter % 1024 == 0 {
            pipe.app.wall_unix = wall_unix();
        }
        iter += 1;
        let busy = pipe.poll(now);
        // The console is cheap when idle but not free: poll it every millisecond.
        if !busy || now - last_console > crate::net::MS {
            last_console = now;
            let mut view = host.view(&mut pipe);
            console.poll(&mut view, 8);
            if let Some(action) = host.power.take() {
                console.flush_for(Duration::from_secs(2));
                return Ok(match action {
                    PowerAction::Poweroff => Outcome::Poweroff,
                    PowerAction::Reboot => Outcome::Reboot,
                });
            }
        }
        if !busy {
            pipe.nic.wait_rx(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn media_errors_name_the_spec() {
        let e = ServeError::Media {
            spec: "nvme:auto".into(),
            source: drivers::storage::StorageError::Device("nvme:auto: no NVMe controller found".into()),
        };
        assert_eq!(e.to_string(), "media nvme:auto: device error: nvme:auto: no NVMe controller found");
    }
}
