//! The appliance's boot configuration: the `appliance.*` keys of the kernel command line, the
//! configuration partition that overrides them ([`ConfigStore`]), and the mapping of the
//! result to `appliance serve` arguments ([`serve_args`]).
//!
//! # The configuration partition
//!
//! A raw GPT partition named `appliance-config` (1 MiB in the image). It holds two slots of
//! [`SLOT_SIZE`] bytes at offsets 0 and [`SLOT_SIZE`]. A slot is:
//!
//! ```text
//! offset  size  field
//!      0     8  magic "APPLCFG1"
//!      8     8  sequence number, u64 little-endian (starts at 1, +1 per write)
//!     16     4  payload length in bytes, u32 little-endian (at most SLOT_SIZE - 64)
//!     20    12  zero
//!     32    32  SHA-256 of bytes 0..32 followed by the payload
//!     64     n  payload: UTF-8 text, one `key=value` line per setting, '\n' terminated
//! ```
//!
//! The valid slot (magic and digest check) with the highest sequence number is the current
//! configuration; a partition with no valid slot is an empty configuration. A write goes to
//! the other slot with the next sequence number and is flushed (fsync) before it returns, so
//! a power cut during a write leaves the previous configuration in force.
//!
//! A second region of two slots follows at [`REGION_SIZE`], the same layout with the magic
//! "APPLTLS1": the certificate chain and private key installed from the console (`tls
//! install`), as PEM text; an empty payload means none. It is apart from the settings so that
//! `config show` and `config set` never see the key.
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes of one slot of the configuration partition.
pub const SLOT_SIZE: u64 = 64 * 1024;
/// Bytes of the configuration region: two slots.
pub const REGION_SIZE: u64 = 2 * SLOT_SIZE;
/// The GPT partition name the init looks for.
pub const PARTITION_NAME: &str = "appliance-config";
/// Environment variable through which the init tells `appliance serve` where the store is.
pub const STORE_ENV: &str = "APPLIANCE_CONFIG_DEVICE";

const MAGIC: &[u8; 8] = b"APPLCFG1";
const CREDENTIALS_MAGIC: &[u8; 8] = b"APPLTLS1";
/// Where the credentials' region starts, from the settings' region.
const CREDENTIALS_AT: u64 = REGION_SIZE;
const HEADER: usize = 64;
const MAX_PAYLOAD: usize = SLOT_SIZE as usize - HEADER;

/// The keys an operator may set, with what each means (shown by `config show`-style help).
pub const KEYS: &[(&str, &str)] = &[
    ("ip", "address/prefix of the appliance, e.g. 192.0.2.10/24"),
    ("gateway", "default gateway, e.g. 192.0.2.1"),
    ("mac", "MAC address to use instead of the port's own"),
    ("nic", "data NIC: packet:<ifname>, tap:<ifname> or dpdk"),
    ("dpdk_args", "EAL arguments when nic=dpdk"),
    ("media", "media volume: nvme:auto or nvme:<pci address> (userspace NVMe driver), or a block device or file path; several, one per drive, comma-separated"),
    ("console", "management console: /dev/ttyXXX, stdio or unix:<path>"),
    ("http_port", "HTTP port (default 80)"),
    ("https_port", "HTTPS port (default 443)"),
    ("tls_cert", "PEM certificate file (enables HTTPS with tls_key)"),
    ("tls_key", "PEM private key file"),
    ("tls_tickets", "TLS session resumption with tickets: on or off (default on)"),
    ("aead", "AES-GCM implementation sealing TLS records: auto (the faster, measured at start), aws-lc-rs or ring (default auto)"),
    ("cores", "cores to run pipelines on, e.g. 0-3,6"),
    ("buffers", "512 KiB storage buffers per core, 4..=8192 (default 8; 64 with nic=dpdk)"),
    ("max_connections", "most connections per core, 16..=1048576 (default 16384)"),
    ("log", "log level: error, warn, info, debug or trace"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown configuration key {0:?} (known: {known})", known = key_names())]
    UnknownKey(String),
    #[error("bad value for {key}: {reason}")]
    BadValue { key: String, reason: String },
    #[error("configuration too large ({0} bytes, at most {MAX_PAYLOAD})")]
    TooLarge(usize),
    #[error("configuration store {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("configuration store {path} is too small ({len} bytes, needs {REGION_SIZE})")]
    TooSmall { path: String, len: u64 },
    #[error("configuration store {path} has no room for a certificate ({len} bytes, needs {needs})", needs = 2 * REGION_SIZE)]
    NoCredentialRegion { path: String, len: u64 },
}

fn key_names() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// Accepts `ip` or `appliance.ip`; returns the short name of a known key.
pub fn canonical_key(key: &str) -> Result<&'static str, ConfigError> {
    let short = key.strip_prefix("appliance.").unwrap_or(key);
    KEYS.iter()
        .map(|(k, _)| *k)
        .find(|k| *k == short)
        .ok_or_else(|| ConfigError::UnknownKey(key.to_string()))
}

/// Checks `value` for `key` (short name). The empty value means "unset".
pub fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
    let bad = |reason: &str| ConfigError::BadValue { key: key.to_string(), reason: reason.to_string() };
    if value.chars().any(|c| c.is_control()) {
        return Err(bad("control characters are not allowed"));
    }
    if value.is_empty() {
        return Ok(());
    }
    match key {
        "ip" => {
            let (addr, prefix) = value.split_once('/').ok_or_else(|| bad("expected <address>/<prefix>"))?;
            addr.parse::<Ipv4Addr>().map_err(|_| bad("not an IPv4 address"))?;
            match prefix.parse::<u8>() {
                Ok(p) if p <= 32 => {}
                _ => return Err(bad("prefix must be 0..=32")),
            }
        }
        "gateway" => {
            value.parse::<Ipv4Addr>().map_err(|_| bad("not an IPv4 address"))?;
        }
        "mac" => {
            let parts: Vec<&str> = value.split(':').collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2 || u8::from_str_radix(p, 16).is_err()) {
                return Err(bad("expected six hex bytes separated by ':'"));
            }
        }
        "nic" => {
            let ok = value == "dpdk"
                || ["packet:", "tap:"].iter().any(|p| value.strip_prefix(p).is_some_and(|n| !n.is_empty() && n.len() < 16));
            if !ok {
                return Err(bad("expected packet:<ifname>, tap:<ifname> or dpdk"));
            }
        }
        "buffers" => {
            crate::server::parse_buffers(value).map_err(|e| bad(&e))?;
        }
        "max_connections" => match value.parse::<u32>() {
            Ok(n) if (16..=1 << 20).contains(&n) => {}
            _ => return Err(bad("expected a number of connections 16..=1048576")),
        },
        "http_port" | "https_port" => match value.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(bad("expected a port number 1..=65535")),
        },
        "cores" => {
            for item in value.split(',') {
                let (lo, hi) = item.split_once('-').unwrap_or((item, item));
                match (lo.parse::<u16>(), hi.parse::<u16>()) {
                    (Ok(l), Ok(h)) if l <= h => {}
                    _ => return Err(bad("expected a list like 0-3,6")),
                }
            }
        }
        "log" => {
            if !["error", "warn", "info", "debug", "trace", "off"].contains(&value) {
                return Err(bad("expected error, warn, info, debug, trace or off"));
            }
        }
        "console" => {
            let ok = value == "stdio" || value.starts_with("/dev/") || value.strip_prefix("unix:").is_some_and(|p| !p.is_empty());
            if !ok {
                return Err(bad("expected /dev/ttyXXX, stdio or unix:<path>"));
            }
        }
        "media" => {
            // One volume, or several (one per drive) separated by commas, as --media takes them.
            let items: Vec<String> = value.split(',').map(|i| i.trim().to_string()).collect();
            for item in &items {
                if item.starts_with("nvme:") {
                    crate::server::MediaSpec::parse(item).map_err(|_| bad("expected nvme:auto or nvme:<pci address> such as nvme:0000:00:04.0"))?;
                }
            }
            crate::server::parse_media(&items).map_err(|e| bad(&e.to_string()))?;
        }
        "tls_tickets" => {
            if !matches!(value, "on" | "off") {
                return Err(bad("expected on or off"));
            }
        }
        "aead" => {
            if value != "auto" && <crate::tls::AeadImpl as clap::ValueEnum>::from_str(value, false).is_err() {
                return Err(bad("expected auto, aws-lc-rs or ring"));
            }
        }
        "tls_cert" | "tls_key" | "dpdk_args" => {}
        other => return Err(ConfigError::UnknownKey(other.to_string())),
    }
    Ok(())
}

/// The settings the init hands to `appliance serve`, merged from the kernel command line and
/// the configuration partition. Keys are short names; a later layer overrides an earlier one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootConfig {
    values: BTreeMap<&'static str, String>,
    /// Where each value came from ("cmdline" or "partition"), for `config show` and the log.
    sources: BTreeMap<&'static str, &'static str>,
    /// Command-line `appliance.*` entries that were ignored, with why.
    pub rejected: Vec<String>,
}

impl BootConfig {
    /// Reads `appliance.<key>=<value>` words of a kernel command line (`/proc/cmdline`).
    /// Other words are ignored; bad `appliance.*` entries are recorded in `rejected`.
    pub fn from_cmdline(cmdline: &str) -> BootConfig {
        let mut cfg = BootConfig::default();
        for word in split_cmdline(cmdline) {
            let Some(rest) = word.strip_prefix("appliance.") else { continue };
            let (key, value) = rest.split_once('=').unwrap_or((rest, ""));
            if let Err(e) = cfg.apply(key, value, "cmdline") {
                cfg.rejected.push(e.to_string());
            }
        }
        cfg
    }

    /// Overrides with stored pairs (the configuration partition); bad pairs go to `rejected`.
    pub fn overlay(&mut self, pairs: &[(String, String)], source: &'static str) {
        for (k, v) in pairs {
            if let Err(e) = self.apply(k, v, source) {
                self.rejected.push(e.to_string());
            }
        }
    }

    /// Sets one key (empty value unsets it) after checking it.
    pub fn apply(&mut self, key: &str, value: &str, source: &'static str) -> Result<(), ConfigError> {
        let key = canonical_key(key)?;
        validate(key, value)?;
        if value.is_empty() {
            self.values.remove(key);
            self.sources.remove(key);
        } else {
            self.values.insert(key, value.to_string());
            self.sources.insert(key, source);
        }
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// Every set key with its value and source, sorted by key.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str, &'static str)> + '_ {
        self.values.iter().map(|(k, v)| (*k, v.as_str(), self.sources.get(k).copied().unwrap_or("?")))
    }
}

/// The configuration in force on this machine, as `config show` presents it: the kernel
/// command line (`/proc/cmdline`) overlaid with the configuration store, if there is one
/// ([`ConfigStore::locate`]). Returns the store too, for `config set`.
pub fn effective() -> (BootConfig, Option<ConfigStore>, Vec<ConfigError>) {
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut cfg = BootConfig::from_cmdline(&cmdline);
    let mut errors = Vec::new();
    let store = ConfigStore::locate().unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    if let Some(s) = &store {
        match s.load() {
            Ok(pairs) => cfg.overlay(&pairs, "partition"),
            Err(e) => errors.push(e),
        }
    }
    (cfg, store, errors)
}

/// Splits a kernel command line into words the way the kernel does (double quotes group).
fn split_cmdline(cmdline: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    words.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        words.push(cur);
    }
    words
}

/// Defaults the image uses where neither layer says otherwise.
pub const DEFAULT_NIC: &str = "packet:eth0";
pub const DEFAULT_CONSOLE: &str = "/dev/ttyS0";

/// The arguments after the program name that start `appliance serve` for `cfg`, beginning
/// with `"serve"`. Keys that are not set are left to `serve`'s own defaults, except the NIC
/// and the console, which default to [`DEFAULT_NIC`] and [`DEFAULT_CONSOLE`] in the image.
pub fn serve_args(cfg: &BootConfig) -> Vec<String> {
    let nic = cfg.get("nic").unwrap_or(DEFAULT_NIC);
    let mut args = vec!["serve".to_string(), "--nic".to_string(), nic.to_string()];
    if nic == "dpdk" {
        if let Some(v) = cfg.get("dpdk_args") {
            // One word: the value starts with "-" (clap would take "-a ..." for an option).
            args.push(format!("--dpdk-args={v}"));
        }
    }
    let mut push = |flag: &str, value: &str| {
        args.push(flag.to_string());
        args.push(value.to_string());
    };
    for (key, flag) in [
        ("ip", "--ip"),
        ("gateway", "--gateway"),
        ("mac", "--mac"),
        ("media", "--media"),
        ("http_port", "--http-port"),
        ("https_port", "--https-port"),
        ("cores", "--cores"),
        ("buffers", "--buffers"),
        ("max_connections", "--max-connections"),
    ] {
        if let Some(v) = cfg.get(key) {
            push(flag, v);
        }
    }
    if let (Some(cert), Some(key)) = (cfg.get("tls_cert"), cfg.get("tls_key")) {
        push("--tls-cert", cert);
        push("--tls-key", key);
    }
    push("--console", cfg.get("console").unwrap_or(DEFAULT_CONSOLE));
    if cfg.get("tls_tickets") == Some("off") {
        args.push("--no-tls-tickets".to_string());
    }
    if let Some(aead) = cfg.get("aead").filter(|a| *a != "auto") {
        args.push("--aead".to_string());
        args.push(aead.to_string());
    }
    args
}

/// The configuration partition (or any file or region standing for it): load and atomic set.
#[derive(Debug)]
pub struct ConfigStore {
    file: File,
    path: PathBuf,
    /// Byte offset of the two slots inside `file` (0 for a partition device).
    base: u64,
    /// Bytes from `base` to the end of `file`.
    len: u64,
}

/// One decoded slot.
#[derive(Debug, PartialEq, Eq)]
struct Slot {
    seq: u64,
    pairs: Vec<(String, String)>,
}

impl ConfigStore {
    /// Opens a partition device (or a file of at least [`REGION_SIZE`] bytes) read-write.
    pub fn open(device_path: impl AsRef<Path>) -> Result<ConfigStore, ConfigError> {
        Self::open_at(device_path, 0)
    }

    /// Opens the region at byte `offset` of `path` (the partition inside a disk image file).
    pub fn open_at(path: impl AsRef<Path>, offset: u64) -> Result<ConfigStore, ConfigError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| ConfigError::Io { path: path.display().to_string(), source };
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io)?;
        // A block device reports size 0 in metadata; seek to its end instead.
        let len = {
            use std::io::{Seek, SeekFrom};
            (&file).seek(SeekFrom::End(0)).map_err(io)?
        };
        if len < offset + REGION_SIZE {
            return Err(ConfigError::TooSmall { path: path.display().to_string(), len: len.saturating_sub(offset) });
        }
        Ok(ConfigStore { file, path, base: offset, len: len - offset })
    }

    /// Finds the store: the device named by `$APPLIANCE_CONFIG_DEVICE` if set, else the block
    /// partition whose GPT name is [`PARTITION_NAME`]. `Ok(None)` when there is none.
    pub fn locate() -> Result<Option<ConfigStore>, ConfigError> {
        if let Some(dev) = std::env::var_os(STORE_ENV) {
            return Self::open(dev).map(Some);
        }
        match find_partition(Path::new("/sys/class/block"), PARTITION_NAME) {
            Some(dev) => Self::open(Path::new("/dev").join(dev)).map(Some),
            None => Ok(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored pairs in the order they were written (empty when no slot is valid).
    pub fn load(&self) -> Result<Vec<(String, String)>, ConfigError> {
        Ok(self.current()?.map(|s| s.pairs).unwrap_or_default())
    }

    /// Sets `key` (short or `appliance.` name) to `value` (empty: remove it), atomically.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let key = canonical_key(key)?;
        validate(key, value)?;
        let current = self.current()?;
        let (seq, mut pairs) = current.map(|s| (s.seq, s.pairs)).unwrap_or((0, Vec::new()));
        pairs.retain(|(k, _)| k != key);
        if !value.is_empty() {
            pairs.push((key.to_string(), value.to_string()));
        }
        self.write(seq + 1, &pairs)
    }

    /// Replaces the whole configuration with `pairs` (each validated), atomically.
    pub fn replace(&mut self, pairs: &[(String, String)]) -> Result<(), ConfigError> {
        let mut clean = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let k = canonical_key(k)?;
            validate(k, v)?;
            if !v.is_empty() {
                clean.retain(|(ck, _): &(String, String)| ck != k);
                clean.push((k.to_string(), v.clone()));
            }
        }
        let seq = self.current()?.map(|s| s.seq).unwrap_or(0);
        self.write(seq + 1, &clean)
    }

    /// The certificate chain and private key installed from the console, as PEM text;
    /// `None` when none is (or a store too small to hold one).
    pub fn load_credentials(&self) -> Result<Option<String>, ConfigError> {
        if self.len < 2 * REGION_SIZE {
            return Ok(None);
        }
        let Some((_, payload)) = self.current_credentials()? else { return Ok(None) };
        Ok(std::str::from_utf8(&payload).ok().filter(|t| !t.is_empty()).map(str::to_string))
    }

    /// Stores `pem` (certificate chain and key) as the installed credentials, atomically.
    pub fn store_credentials(&mut self, pem: &str) -> Result<(), ConfigError> {
        self.write_credentials(pem.as_bytes())
    }

    /// Removes the installed credentials, atomically (the files named by `tls_cert` and
    /// `tls_key` serve again from the next start).
    pub fn clear_credentials(&mut self) -> Result<(), ConfigError> {
        self.write_credentials(&[])
    }

    fn current_credentials(&self) -> Result<Option<(u64, Vec<u8>)>, ConfigError> {
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut buf = vec![0u8; SLOT_SIZE as usize];
        for index in 0..2 {
            self.file.read_exact_at(&mut buf, self.base + CREDENTIALS_AT + index * SLOT_SIZE).map_err(|e| self.io(e))?;
            if let Some((seq, payload)) = decode_region_slot(CREDENTIALS_MAGIC, &buf) {
                if best.as_ref().is_none_or(|(b, _)| seq > *b) {
                    best = Some((seq, payload.to_vec()));
                }
            }
        }
        Ok(best)
    }

    fn write_credentials(&mut self, payload: &[u8]) -> Result<(), ConfigError> {
        if self.len < 2 * REGION_SIZE {
            return Err(ConfigError::NoCredentialRegion { path: self.path.display().to_string(), len: self.len });
        }
        let seq = self.current_credentials()?.map_or(0, |(seq, _)| seq) + 1;
        let slot = encode_region_slot(CREDENTIALS_MAGIC, seq, payload)?;
        self.file.write_all_at(&slot, self.base + CREDENTIALS_AT + (seq % 2) * SLOT_SIZE).map_err(|e| self.io(e))?;
        self.file.sync_all().map_err(|e| self.io(e))
    }

    fn io(&self, source: std::io::Error) -> ConfigError {
        ConfigError::Io { path: self.path.display().to_string(), source }
    }

    fn read_slot(&self, index: u64) -> Result<Option<Slot>, ConfigError> {
        let mut buf = vec![0u8; SLOT_SIZE as usize];
        self.file.read_exact_at(&mut buf, self.base + index * SLOT_SIZE).map_err(|e| self.io(e))?;
        Ok(decode_slot(&buf))
    }

    fn current(&self) -> Result<Option<Slot>, ConfigError> {
        let a = self.read_slot(0)?;
        let b = self.read_slot(1)?;
        Ok(match (a, b) {
            (Some(a), Some(b)) => Some(if b.seq > a.seq { b } else { a }),
            (a, b) => a.or(b),
        })
    }

    /// Writes slot `seq % 2` (the one not holding `seq - 1`) and flushes it.
    fn write(&mut self, seq: u64, pairs: &[(String, String)]) -> Result<(), ConfigError> {
        let slot = encode_slot(seq, pairs)?;
        let index = seq % 2;
        self.file.write_all_at(&slot, self.base + index * SLOT_SIZE).map_err(|e| self.io(e))?;
        self.file.sync_all().map_err(|e| self.io(e))
    }
}

fn encode_slot(seq: u64, pairs: &[(String, String)]) -> Result<Vec<u8>, ConfigError> {
    let mut payload = String::new();
    for (k, v) in pairs {
        payload.push_str(k);
        payload.push('=');
        payload.push_str(v);
        payload.push('\n');
    }
    encode_region_slot(MAGIC, seq, payload.as_bytes())
}

/// A slot of either region: `magic`, sequence number, length, digest, payload.
fn encode_region_slot(magic: &[u8; 8], seq: u64, payload: &[u8]) -> Result<Vec<u8>, ConfigError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(ConfigError::TooLarge(payload.len()));
    }
    let mut slot = vec![0u8; SLOT_SIZE as usize];
    slot[0..8].copy_from_slice(magic);
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    slot[HEADER..HEADER + payload.len()].copy_from_slice(payload);
    let digest = slot_digest(&slot[0..32], payload);
    slot[32..64].copy_from_slice(&digest);
    Ok(slot)
}

fn slot_digest(head: &[u8], payload: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(head);
    h.update(payload);
    h.finalize().into()
}

fn decode_slot(slot: &[u8]) -> Option<Slot> {
    let (seq, payload) = decode_region_slot(MAGIC, slot)?;
    let text = std::str::from_utf8(payload).ok()?;
    let pairs = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Slot { seq, pairs })
}

/// The sequence number and payload of a valid slot of the region `magic` names.
fn decode_region_slot<'a>(magic: &[u8; 8], slot: &'a [u8]) -> Option<(u64, &'a [u8])> {
    if slot.len() < HEADER || &slot[0..8] != magic {
        return None;
    }
    let seq = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(slot[16..20].try_into().ok()?) as usize;
    if len > MAX_PAYLOAD || HEADER + len > slot.len() {
        return None;
    }
    let payload = &slot[HEADER..HEADER + len];
    if slot_digest(&slot[0..32], payload) != slot[32..64] {
        return None;
    }
    Some((seq, payload))
}

/// The name (e.g. "vda2") of the block device under `sys_block` whose uevent says
/// `PARTNAME=<name>`.
pub fn find_partition(sys_block: &Path, name: &str) -> Option<String> {
    let want = format!("PARTNAME={name}");
    let mut found: Vec<String> = std::fs::read_dir(sys_block)
        .ok()?
        .flatten()
        .filter(|e| {
            std::fs::read_to_string(e.path().join("uevent")).is_ok_and(|u| u.lines().any(|l| l == want))
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    found.sort();
    found.into_iter().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_file() -> (tempfile::NamedTempFile, ConfigStore) {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(REGION_SIZE).unwrap();
        let s = ConfigStore::open(f.path()).unwrap();
        (f, s)
    }

    #[test]
    fn cmdline_keys_are_read_and_others_ignored() {
        let cfg = BootConfig::from_cmdline(
            "BOOT_IMAGE=/vmlinuz console=ttyS0,115200 appliance.ip=10.0.2.15/24 appliance.gateway=10.0.2.2 \
             quiet appliance.nic=packet:eth0 \"appliance.dpdk_args=-l 0 --vdev x\" appliance.http_port=8080\n",
        );
        assert_eq!(cfg.get("ip"), Some("10.0.2.15/24"));
        assert_eq!(cfg.get("gateway"), Some("10.0.2.2"));
        assert_eq!(cfg.get("nic"), Some("packet:eth0"));
        assert_eq!(cfg.get("dpdk_args"), Some("-l 0 --vdev x"));
        assert_eq!(cfg.get("http_port"), Some("8080"));
        assert_eq!(cfg.get("console"), None);
        assert!(cfg.rejected.is_empty(), "{:?}", cfg.rejected);
    }

    #[test]
    fn bad_cmdline_entries_are_rejected_not_applied() {
        let cfg = BootConfig::from_cmdline("appliance.ip=10.0.2.300/24 appliance.colour=blue appliance.http_port=0 appliance.log=info");
        assert_eq!(cfg.get("ip"), None);
        assert_eq!(cfg.get("http_port"), None);
        assert_eq!(cfg.get("log"), Some("info"));
        assert_eq!(cfg.rejected.len(), 3, "{:?}", cfg.rejected);
    }

    #[test]
    fn partition_overrides_cmdline_and_empty_unsets() {
        let mut cfg = BootConfig::from_cmdline("appliance.ip=10.0.2.15/24 appliance.cores=0-1 appliance.log=info");
        cfg.overlay(
            &[("ip".into(), "192.0.2.9/24".into()), ("cores".into(), "".into()), ("bogus".into(), "x".into())],
            "partition",
        );
        assert_eq!(cfg.get("ip"), Some("192.0.2.9/24"));
        assert_eq!(cfg.get("cores"), None);
        assert_eq!(cfg.get("log"), Some("info"));
        assert_eq!(cfg.rejected.len(), 1);
        let entries: Vec<_> = cfg.entries().collect();
        assert_eq!(entries, vec![("ip", "192.0.2.9/24", "partition"), ("log", "info", "cmdline")]);
    }

    #[test]
    fn validation_covers_each_kind_of_value() {
        for (k, v) in [
            ("ip", "1.2.3.4/0"),
            ("gateway", "10.0.2.2"),
            ("mac", "52:54:00:12:34:56"),
            ("nic", "tap:tap0"),
            ("nic", "dpdk"),
            ("cores", "0-3,6"),
            ("console", "unix:/run/c.sock"),
            ("https_port", "65535"),
            ("buffers", "4"),
            ("buffers", "8192"),
            ("max_connections", "50000"),
            ("media", "nvme:0000:00:04.0"),
            ("media", "nvme:auto"),
            ("media", "/dev/nvme0n1"),
            ("media", "nvme:0000:00:04.0,nvme:0000:00:05.0"),
            ("media", "nvme:auto,nvme:auto,/dev/sdb"),
            ("tls_tickets", "on"),
            ("tls_tickets", "off"),
            ("aead", "auto"),
            ("aead", "aws-lc-rs"),
            ("aead", "ring"),
        ] {
            validate(k, v).unwrap_or_else(|e| panic!("{k}={v}: {e}"));
        }
        for (k, v) in [
            ("ip", "1.2.3.4"),
            ("ip", "1.2.3.4/33"),
            ("gateway", "gw"),
            ("mac", "52:54:00:12:34"),
            ("mac", "52:54:00:12:34:zz"),
            ("nic", "eth0"),
            ("nic", "packet:"),
            ("cores", "3-1"),
            ("cores", "a"),
            ("log", "loud"),
            ("tls_tickets", "no"),
            ("aead", "openssl"),
            ("aead", "Ring"),
            ("console", "ttyS0"),
            ("http_port", "70000"),
            ("buffers", "3"),
            ("buffers", "8193"),
            ("buffers", "many"),
            ("max_connections", "15"),
            ("max_connections", "-1"),
            ("media", "a\nb"),
            ("media", "nvme:0000:00:04"),
            ("media", "nvme:"),
            ("media", "nvme:auto,nvme:0000:00:04"),
            ("media", "/dev/sdb,/dev/sdb"),
            ("media", "nvme:0000:00:04.0,,/dev/sdb"),
        ] {
            assert!(validate(k, v).is_err(), "{k}={v} accepted");
        }
    }

    #[test]
    fn serve_args_map_every_key() {
        let mut cfg = BootConfig::from_cmdline(
            "appliance.ip=10.0.2.15/24 appliance.gateway=10.0.2.2 appliance.mac=02:00:00:00:00:01 \
             appliance.media=/dev/nvme0n1 appliance.http_port=8080 appliance.https_port=8443 appliance.cores=0-1 \
             appliance.buffers=128 appliance.max_connections=50000",
        );
        cfg.apply("tls_cert", "/c.pem", "partition").unwrap();
        assert_eq!(
            serve_args(&cfg),
            [
                "serve", "--nic", "packet:eth0", "--ip", "10.0.2.15/24", "--gateway", "10.0.2.2", "--mac",
                "02:00:00:00:00:01", "--media", "/dev/nvme0n1", "--http-port", "8080", "--https-port", "8443",
                "--cores", "0-1", "--buffers", "128", "--max-connections", "50000", "--console", "/dev/ttyS0"
            ]
        );
        cfg.apply("tls_key", "/k.pem", "partition").unwrap();
        cfg.apply("nic", "dpdk", "partition").unwrap();
        cfg.apply("dpdk_args", "-l 0 --vdev net_tap0", "partition").unwrap();
        cfg.apply("console", "unix:/run/console", "partition").unwrap();
        let args = serve_args(&cfg);
        let joined = args.join(" ");
        assert!(joined.starts_with("serve --nic dpdk --dpdk-args=-l 0 --vdev net_tap0 --ip"), "{joined}");
        assert!(joined.ends_with("--tls-cert /c.pem --tls-key /k.pem --console unix:/run/console"), "{joined}");
        assert!(args.contains(&"--dpdk-args=-l 0 --vdev net_tap0".to_string()), "EAL args stay one argument");
        // clap reads it back whole, though it starts with '-'.
        #[derive(clap::Parser)]
        struct Serve {
            #[command(flatten)]
            args: crate::server::ServeArgs,
        }
        let parsed = <Serve as clap::Parser>::try_parse_from(&args).expect("serve parses its own arguments");
        assert_eq!(parsed.args.dpdk_args, "-l 0 --vdev net_tap0");
        assert_eq!(parsed.args.media, ["/dev/nvme0n1"]);
        assert_eq!((parsed.args.buffers, parsed.args.max_connections), (Some(128), 50000));
        assert!(!parsed.args.no_tls_tickets);
        cfg.apply("tls_tickets", "off", "partition").unwrap();
        let args = serve_args(&cfg);
        assert!(args.join(" ").ends_with("--tls-key /k.pem --console unix:/run/console --no-tls-tickets"), "{args:?}");
        let parsed = <Serve as clap::Parser>::try_parse_from(&args).expect("serve parses its own arguments");
        assert!(parsed.args.no_tls_tickets);
        assert_eq!(parsed.args.aead, None);
        cfg.apply("aead", "ring", "partition").unwrap();
        let parsed = <Serve as clap::Parser>::try_parse_from(serve_args(&cfg)).expect("serve parses its own arguments");
        assert_eq!(parsed.args.aead, Some(crate::tls::AeadImpl::Ring));
        cfg.apply("aead", "auto", "partition").unwrap();
        assert!(!serve_args(&cfg).contains(&"--aead".to_string()));
        cfg.apply("tls_tickets", "on", "partition").unwrap();
        // Several volumes, one per drive: one --media with the list, which serve splits.
        cfg.apply("media", "nvme:0000:00:04.0,nvme:auto", "cmdline").unwrap();
        let args = serve_args(&cfg);
        assert!(args.join(" ").contains(" --media nvme:0000:00:04.0,nvme:auto "), "{args:?}");
        let parsed = <Serve as clap::Parser>::try_parse_from(&args).expect("serve parses its own arguments");
        assert_eq!(parsed.args.media, ["nvme:0000:00:04.0", "nvme:auto"]);
    }

    #[test]
    fn empty_store_loads_empty() {
        let (_f, s) = store_file();
        assert!(s.load().unwrap().is_empty());
    }

    #[test]
    fn set_persists_across_reopen_and_alternates_slots() {
        let (f, mut s) = store_file();
        s.set("appliance.ip", "192.0.2.10/24").unwrap();
        s.set("log", "debug").unwrap();
        s.set("ip", "192.0.2.11/24").unwrap();
        let s2 = ConfigStore::open(f.path()).unwrap();
        assert_eq!(
            s2.load().unwrap(),
            vec![("log".to_string(), "debug".to_string()), ("ip".to_string(), "192.0.2.11/24".to_string())]
        );
        // Three writes: seq 1 -> slot 1, seq 2 -> slot 0, seq 3 -> slot 1.
        assert_eq!(s2.read_slot(1).unwrap().unwrap().seq, 3);
        assert_eq!(s2.read_slot(0).unwrap().unwrap().seq, 2);
        s.set("log", "").unwrap();
        assert_eq!(s.load().unwrap(), vec![("ip".to_string(), "192.0.2.11/24".to_string())]);
    }

    #[test]
    fn bad_key_or_value_is_refused_and_nothing_written() {
        let (_f, mut s) = store_file();
        s.set("ip", "10.0.0.1/8").unwrap();
        assert!(matches!(s.set("colour", "blue"), Err(ConfigError::UnknownKey(_))));
        assert!(matches!(s.set("ip", "nope"), Err(ConfigError::BadValue { .. })));
        assert_eq!(s.load().unwrap(), vec![("ip".to_string(), "10.0.0.1/8".to_string())]);
        assert_eq!(s.current().unwrap().unwrap().seq, 1);
    }

    #[test]
    fn torn_write_keeps_previous_configuration() {
        let (f, mut s) = store_file();
        s.set("ip", "10.0.0.1/8").unwrap(); // seq 1, slot 1
        s.set("ip", "10.0.0.2/8").unwrap(); // seq 2, slot 0
        // Corrupt the newest slot's payload, as a power cut mid-write would.
        s.file.write_all_at(b"X", HEADER as u64 + 3).unwrap();
        let s2 = ConfigStore::open(f.path()).unwrap();
        assert_eq!(s2.load().unwrap(), vec![("ip".to_string(), "10.0.0.1/8".to_string())]);
        // The next write goes after the surviving sequence number and wins.
        let mut s2 = s2;
        s2.set("log", "warn").unwrap();
        assert_eq!(s2.current().unwrap().unwrap().seq, 2);
        assert_eq!(s2.load().unwrap().len(), 2);
    }

    #[test]
    fn region_inside_an_image_file() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(3 * 1024 * 1024).unwrap();
        let mut s = ConfigStore::open_at(f.path(), 2 * 1024 * 1024).unwrap();
        s.replace(&[("ip".into(), "10.1.1.1/24".into()), ("log".into(), "trace".into())]).unwrap();
        let again = ConfigStore::open_at(f.path(), 2 * 1024 * 1024).unwrap();
        assert_eq!(again.load().unwrap().len(), 2);
        assert!(ConfigStore::open(f.path()).unwrap().load().unwrap().is_empty());
        assert!(matches!(ConfigStore::open_at(f.path(), 3 * 1024 * 1024 - 10), Err(ConfigError::TooSmall { .. })));
    }

    #[test]
    fn credentials_live_apart_from_settings_and_survive_a_torn_write() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1024 * 1024).unwrap();
        let mut s = ConfigStore::open(f.path()).unwrap();
        assert_eq!(s.load_credentials().unwrap(), None);
        s.set("ip", "10.0.0.1/8").unwrap();
        s.store_credentials("-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap(); // seq 1, slot 1
        s.store_credentials("second").unwrap(); // seq 2, slot 0
        let again = ConfigStore::open(f.path()).unwrap();
        assert_eq!(again.load_credentials().unwrap().as_deref(), Some("second"));
        assert_eq!(again.load().unwrap(), vec![("ip".to_string(), "10.0.0.1/8".to_string())], "settings untouched, and the key never among them");
        // A power cut in the middle of the newest write leaves the one before.
        s.file.write_all_at(b"X", CREDENTIALS_AT + HEADER as u64 + 2).unwrap();
        assert_eq!(s.load_credentials().unwrap().as_deref(), Some("-----BEGIN CERTIFICATE-----\nAAAA\n"));
        s.clear_credentials().unwrap();
        assert_eq!(ConfigStore::open(f.path()).unwrap().load_credentials().unwrap(), None);
        assert_eq!(s.load().unwrap().len(), 1);
        // The settings' store of the smallest size has no room for them: said so, nothing written.
        let (_small, mut small) = store_file();
        assert_eq!(small.load_credentials().unwrap(), None);
        let e = small.store_credentials("x").unwrap_err().to_string();
        assert!(e.contains("no room for a certificate"), "{e}");
        assert!(matches!(small.store_credentials(&"x".repeat(MAX_PAYLOAD + 1)), Err(ConfigError::NoCredentialRegion { .. })));
        assert!(matches!(s.store_credentials(&"x".repeat(MAX_PAYLOAD + 1)), Err(ConfigError::TooLarge(_))));
    }

    #[test]
    fn oversized_configuration_is_refused() {
        let (_f, mut s) = store_file();
        let big = "x".repeat(MAX_PAYLOAD);
        assert!(matches!(s.set("media", &big), Err(ConfigError::TooLarge(_))));
    }

    #[test]
    fn garbage_slots_are_not_valid() {
        assert!(decode_slot(&[0u8; 100]).is_none());
        let mut slot = encode_slot(7, &[("ip".into(), "1.2.3.4/5".into())]).unwrap();
        assert_eq!(decode_slot(&slot).unwrap().seq, 7);
        slot[16] = 0xff; // length beyond the payload
        assert!(decode_slot(&slot).is_none());
    }

    #[test]
    fn partition_is_found_by_name() {
        let dir = tempfile::tempdir().unwrap();
        for (dev, uevent) in [
            ("vda", "MAJOR=254\nDEVNAME=vda\nDEVTYPE=disk\n"),
            ("vda1", "DEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=ESP\n"),
            ("vda2", "DEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=appliance-config\n"),
        ] {
            std::fs::create_dir(dir.path().join(dev)).unwrap();
            std::fs::write(dir.path().join(dev).join("uevent"), uevent).unwrap();
        }
        assert_eq!(find_partition(dir.path(), PARTITION_NAME).as_deref(), Some("vda2"));
        assert_eq!(find_partition(dir.path(), "nope"), None);
    }
}
