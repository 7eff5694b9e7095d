//! The management console: a line-based command interpreter ([`Console`], sans-IO: a line in,
//! an answer appended to a `String`) over a byte transport ([`ConsoleIo`]: stdio, a serial tty,
//! or a Unix socket), tied together by [`ConsoleService`], which core 0 polls each loop.
//!
//! The server is reached only through the [`ConsoleHost`] trait, so the interpreter owns no
//! appliance state: it asks for snapshots (status, counters, connections, media) and requests
//! actions (log level, drain, reboot, power-off, settings).
//!
//! Protocol (documented in `help`): one command a line (LF, CR or CRLF), commands lower-case,
//! surrounding whitespace ignored. Every answer ends with a line `ok` or `error: <reason>`.
//! An empty line answers just `ok` (a cheap "are you there" for scripts and operators). There is
//! no prompt and no echo, so scripts read answers only.
#![deny(unsafe_code)]

mod commands;
mod lines;
mod report;
mod service;
pub mod transport;

/// A host with fixed answers, for the console's tests and the fuzz targets (cargo feature
/// `fuzzing`); never part of a normal build.
#[cfg(any(test, feature = "fuzzing"))]
pub mod fake;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use crate::stats::Stats;
pub use commands::Console;
pub use drivers::nic::{LinkInfo, NicCounters};
pub use drivers::storage::StorageCounters;
pub use lines::LineSplitter;
pub use service::ConsoleService;
pub use transport::{ConsoleError, ConsoleIo};

/// Longest accepted command line in bytes (without its line end). Longer lines get
/// `error: line too long`.
pub const MAX_LINE: usize = 1024;

/// Default and largest number of rows `conns` and `media` print.
pub const LIST_DEFAULT: usize = 20;
pub const LIST_MAX: usize = 1000;

/// What `status` reports. Built by the host on request (the console path may allocate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// Firmware version, e.g. `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// Time since the appliance started serving.
    pub uptime: Duration,
    /// The stack's own address and prefix length (`--ip`).
    pub ip: Ipv4Addr,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    /// The MAC address the stack uses (`--mac`, or the port's own).
    pub mac: [u8; 6],
    /// The port as the NIC driver reports it (driver name, port MAC, MTU, link state).
    pub link: LinkInfo,
    /// CPU numbers the pipelines are pinned to.
    pub cores: Vec<usize>,
    pub media: MediaSummary,
    /// True once `drain` was requested: no new connections are accepted.
    pub draining: bool,
    pub http_port: u16,
    /// `None` when HTTPS is not configured.
    pub https_port: Option<u16>,
    /// HTTPS resumes sessions with tickets (`serve --no-tls-tickets` turns it off).
    pub tls_tickets: bool,
}

/// The mounted media volumes, in brief.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaSummary {
    /// "file" or "nvme-vfio" (the storage backend; "mixed" for drives of both kinds).
    pub backend: String,
    /// Where the volume is: a file path or a PCI address (the drives' sources, comma-separated).
    pub source: String,
    /// Objects served (a path on several drives counts once).
    pub objects: u64,
    /// Sum of the served objects' sizes.
    pub bytes: u64,
    /// Each drive's volume, drive 0 first (one entry for a single volume).
    pub drives: Vec<DriveSummary>,
    /// Paths on more than one drive (served from the first), at most [`LIST_MAX`] of them.
    pub shadowed: Vec<ShadowedPath>,
    /// How many paths are on more than one drive in all.
    pub shadowed_total: usize,
}

/// One drive's volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveSummary {
    /// "file" or "nvme-vfio".
    pub backend: String,
    /// What `--media` named for it, or what it turned out to be (the controller found).
    pub source: String,
    /// Objects on the volume (shadowed ones included).
    pub objects: u64,
    pub bytes: u64,
    /// Why the drive serves nothing (it could not be opened, or its volume loaded, at start).
    pub failed: Option<String>,
}

/// A path packed on more than one drive: served from `served_from`, hidden on `hidden_on`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShadowedPath {
    pub path: String,
    pub served_from: usize,
    pub hidden_on: usize,
}

/// What `stats` reports: the per-core [`Stats`] summed over cores plus the drivers' counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Summed over every core. `console_commands`/`console_errors` may be left at zero: the
    /// [`Console`] adds its own counts when it prints.
    pub stats: Stats,
    /// Summed over every queue of the port.
    pub nic: NicCounters,
    /// [`LinkInfo::driver`]: `"tap"`, `"sim"` or `"dpdk:<pmd>"`.
    pub nic_driver: String,
    /// Summed over every core's storage queue.
    pub storage: StorageCounters,
    /// [`drivers::storage::Storage::backend`]: "file" or "nvme-vfio" ("mixed" for both kinds).
    pub storage_backend: String,
    /// Each drive's counters summed over the cores, drive 0 first (`stats` member
    /// "storage.drives").
    pub drives: Vec<DriveCounters>,
    /// Each pipeline's share, in core order (`stats` member "cores").
    pub per_core: Vec<CoreCounters>,
    /// The port's extended statistics (`stats` member "nic.xstats"): DPDK's xstats and the
    /// backend's `sw_*` counters; empty for backends without them.
    pub nic_xstats: Vec<(String, u64)>,
}

/// One drive's storage counters, summed over every core's queue on it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveCounters {
    /// Its `--media` item as found: a path, or `nvme:<pci address>` (`nvme:auto` resolved).
    pub source: String,
    pub backend: String,
    pub counters: StorageCounters,
}

/// What one pipeline (core) carried: enough to see how RSS spread the load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// CPU number the pipeline is pinned to.
    pub core: usize,
    pub connections_active: u64,
    pub connections_opened: u64,
    pub http_requests: u64,
    pub http_body_bytes: u64,
    pub nic_rx_packets: u64,
    pub nic_tx_bytes: u64,
    pub storage_reads: u64,
}

/// One open connection as `conns` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnSummary {
    pub remote: SocketAddr,
    pub local_port: u16,
    /// TCP state name, e.g. "established", "fin-wait-1".
    pub state: &'static str,
    /// Payload bytes acknowledged by the peer (or sent, if the host tracks only that).
    pub bytes_sent: u64,
    /// Time since the connection was accepted.
    pub age: Duration,
    /// Time since the last segment was received.
    pub idle: Duration,
    pub tls: bool,
    /// CPU number of the pipeline that owns it.
    pub core: usize,
}

/// One object of the media volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaEntry {
    /// URL path, e.g. "/video/seg1.ts".
    pub path: String,
    /// The drive it is served from (0 with a single volume).
    pub drive: usize,
    pub size: u64,
    pub content_type: String,
}

/// A bounded list: at most the `max` entries asked for, and how many exist in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing<T> {
    pub total: usize,
    pub entries: Vec<T>,
}

/// The HTTPS certificate in use, as `tls` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    pub port: u16,
    pub tickets: bool,
    /// Where the certificate came from: the files given at start, or `tls install`.
    pub source: String,
    /// Leaf first.
    pub chain: Vec<crate::tls::certs::CertSummary>,
    /// The appliance's wall clock (unix seconds), for the days left.
    pub now: i64,
    /// The AES-GCM implementation sealing response records, and why (`serve --aead`).
    pub sealer: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    Poweroff,
}

/// What the server offers the console. Called on core 0 between loop iterations; snapshots may
/// allocate.
pub trait ConsoleHost {
    fn status(&self) -> StatusInfo;
    fn counters(&self) -> Counters;
    /// At most `max` connections (any order the host likes) and the total count.
    fn connections(&self, max: usize) -> Listing<ConnSummary>;
    /// At most `max` objects (path order, every drive's) and the total count.
    fn media(&self, max: usize) -> Listing<MediaEntry>;
    fn set_log_level(&mut self, level: log::LevelFilter);
    /// Stop accepting connections; open transfers finish.
    fn drain(&mut self);
    /// Record the request; the host acts after the answer is written (see
    /// [`ConsoleService::flush_for`]).
    fn power(&mut self, action: PowerAction);
    /// Settings as (key, value) pairs; may be empty.
    fn config_show(&self) -> Vec<(String, String)>;
    /// Change a setting; `Err` holds the reason shown after `error: `.
    fn config_set(&mut self, key: &str, value: &str) -> Result<(), String>;
    /// The HTTPS certificate in use; `None` when HTTPS is off.
    fn tls_info(&self) -> Option<TlsInfo>;
    /// Check `pem` (a certificate chain, leaf first, and its private key), make it every
    /// core's certificate for new handshakes and store it for the next start. `Ok` holds what
    /// is served now and a line on where it was stored; `Err` the reason, with nothing changed.
    fn tls_install(&mut self, pem: &str) -> Result<(TlsInfo, String), String>;
    /// Forget the installed certificate: the files given at start serve again.
    fn tls_remove(&mut self) -> Result<(TlsInfo, String), String>;
    /// New session-ticket keys for every core's new handshakes: no ticket issued before
    /// resumes. `Err` when HTTPS or tickets are off.
    fn tls_rotate_tickets(&mut self) -> Result<TlsInfo, String>;
}
