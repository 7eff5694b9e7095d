//! What the console sees of a running appliance: status, counters summed over the cores,
//! connections of every core, media, and the few things it may change (log level, drain,
//! power). The console runs on the first core: its pipeline is read live, the others through
//! what they published on the [`Board`].
use std::net::Ipv4Addr;
use std::time::Duration;

use drivers::nic::Nic;
use drivers::storage::Storage;

use super::board::Board;
use super::pipeline::Pipeline;
use super::{monotonic_ns, ServeArgs};
use super::credentials::{self, TlsState};
use crate::console::{
    ConnSummary, ConsoleHost, Counters, DriveCounters, DriveSummary, Listing, MediaEntry, MediaSummary, PowerAction, ShadowedPath,
    StatusInfo, TlsInfo, LIST_MAX,
};

/// How long `conns` waits for the other cores' listings (they answer within a loop turn).
const LISTING_WAIT: Duration = Duration::from_millis(200);
pub use crate::sys::{allowed_cores, pin_to_core};

/// The configuration partition the image's init found (passed in the environment).
pub fn config_store() -> Option<crate::boot::config::ConfigStore> {
    let path = std::env::var_os(crate::boot::config::STORE_ENV)?;
    crate::boot::config::ConfigStore::open(path).map_err(|e| log::warn!("configuration store: {e}")).ok()
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// The serve settings the console reports, and what it asked for.
pub struct Host {
    ip: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    cores: Vec<usize>,
    http_port: u16,
    /// `--https-port`: where HTTPS listens once it has a certificate.
    https_port: u16,
    tls_tickets: bool,
    /// What seals response records, and why ([`crate::tls::AeadChoice::describe`]).
    sealer: String,
    /// The HTTPS configuration in force (None: HTTPS off).
    tls: Option<super::credentials::TlsState>,
    /// `--media`: one spec per drive.
    media_source: Vec<String>,
    /// What each drive turned out to be (the controller `nvme:auto` found), where known.
    media_detail: Vec<Option<String>>,
    /// Each drive as found (`nvme:<pci address>` for `nvme:auto`).
    media_found: Vec<String>,
    nic_spec: String,
    start: std::time::Instant,
    pub power: Option<PowerAction>,
}

impl Host {
    pub fn new(args: &ServeArgs, ip: Ipv4Addr, prefix: u8, cores: Vec<usize>, start: std::time::Instant) -> Self {
        Host {
            ip,
            prefix,
            gateway: args.gateway,
            cores,
            http_port: args.http_port,
            https_port: args.https_port,
            tls_tickets: !args.no_tls_tickets,
            sealer: args.aead_choice.describe(),
            tls: args.tls.as_deref().cloned(),
            media_source: args.media.clone(),
            media_detail: args.media_detail.clone(),
            media_found: args.media_found.clone(),
            nic_spec: args.nic.clone(),
            start,
            power: None,
        }
    }

    /// Drive `drive`'s source: what it turned out to be, else its `--media` spec.
    fn drive_source(&self, drive: usize) -> String {
        match self.media_detail.get(drive) {
            Some(Some(detail)) => detail.clone(),
            _ => self.media_source.get(drive).cloned().unwrap_or_default(),
        }
    }

    /// The console's view: `pipe` is the first core's pipeline (pipeline 0 of `board`).
    pub fn view<'a, N: Nic, S: Storage>(&'a mut self, pipe: &'a mut Pipeline<N, S>, board: &'a Board) -> View<'a, N, S> {
        View { host: self, pipe, board }
    }
}

pub struct View<'a, N: Nic, S: Storage> {
    host: &'a mut Host,
    pipe: &'a mut Pipeline<N, S>,
    board: &'a Board,
}

impl<N: Nic, S: Storage> ConsoleHost for View<'_, N, S> {
    fn status(&self) -> StatusInfo {
        let library = &self.pipe.app.library;
        let storage = &self.pipe.app.storage;
        let drives: Vec<DriveSummary> = library
            .drives()
            .iter()
            .enumerate()
            .map(|(i, d)| DriveSummary {
                backend: storage.drive_backend(i).to_string(),
                source: self.host.drive_source(i),
                objects: d.objects as u64,
                bytes: d.data_bytes,
                failed: d.failed.clone(),
            })
            .collect();
        let source = if drives.len() == 1 { drives[0].source.clone() } else { self.host.media_source.join(",") };
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime: self.host.start.elapsed(),
            ip: self.host.ip,
            prefix_len: self.host.prefix,
            gateway: self.host.gateway,
            mac: self.pipe.stack.cfg.mac,
            link: self.pipe.nic.link(),
            cores: self.host.cores.clone(),
            media: MediaSummary {
                backend: storage.backend().to_string(),
                source,
                objects: library.len() as u64,
                bytes: library.data_bytes(),
                drives,
                shadowed: library
                    .shadowed()
                    .iter()
                    .take(LIST_MAX)
                    .map(|p| ShadowedPath { path: p.path.clone(), served_from: p.served_from, hidden_on: p.hidden_on })
                    .collect(),
                shadowed_total: library.shadowed().len(),
            },
            draining: self.pipe.app.draining,
            http_port: self.host.http_port,
            https_port: self.host.tls.as_ref().map(|t| t.port),
            tls_tickets: self.host.tls_tickets,
        }
    }

    fn counters(&self) -> Counters {
        let mut c = Counters {
            stats: self.pipe.stats(),
            nic: self.pipe.nic.counters(),
            nic_driver: self.pipe.nic.link().driver,
            storage: self.pipe.app.storage.counters(),
            storage_backend: self.pipe.app.storage.backend().to_string(),
            drives: (0..self.pipe.app.storage.drives())
                .map(|d| DriveCounters {
                    source: self.host.media_found.get(d).or(self.host.media_source.get(d)).cloned().unwrap_or_default(),
                    backend: self.pipe.app.storage.drive_backend(d).to_string(),
                    counters: self.pipe.app.storage.drive_counters(d),
                })
                .collect(),
            per_core: Vec::with_capacity(self.board.pipelines()),
            nic_xstats: self.pipe.nic.xstats(),
        };
        let first = super::board::CoreReport { stats: c.stats, nic: c.nic, storage: c.storage, ..Default::default() };
        c.per_core.push(first.share(self.board.core_of(0)));
        for i in 1..self.board.pipelines() {
            let r = self.board.report(i);
            c.stats += r.stats;
            c.nic += r.nic;
            c.storage += r.storage;
            for (d, counters) in c.drives.iter_mut().zip(&r.drives) {
                d.counters += *counters;
            }
            c.per_core.push(r.share(self.board.core_of(i)));
        }
        c
    }

    fn connections(&self, max: usize) -> Listing<ConnSummary> {
        let now = monotonic_ns(self.host.start);
        let mut entries = self.pipe.connection_summaries(max, now, self.board.core_of(0));
        let mut total = self.pipe.stack.connection_count();
        if self.board.pipelines() > 1 {
            for (_, r) in self.board.request_connections(max, 0, LISTING_WAIT) {
                total += r.conns_total;
                entries.extend(r.conns.into_iter().take(max - entries.len().min(max)));
            }
        }
        entries.truncate(max);
        Listing { total, entries }
    }

    fn media(&self, max: usize) -> Listing<MediaEntry> {
        let library = &self.pipe.app.library;
        let entries = library
            .objects()
            .take(max)
            .map(|(o, drive)| MediaEntry { path: o.path.clone(), drive, size: o.size, content_type: o.content_type.clone() })
            .collect();
        Listing { total: library.len(), entries }
    }

    fn set_log_level(&mut self, level: log::LevelFilter) {
        log::set_max_level(level);
    }

    fn drain(&mut self) {
        self.pipe.drain();
        // The other cores follow at their next publication.
        self.board.drain();
    }

    fn power(&mut self, action: PowerAction) {
        self.host.power = Some(action);
    }

    fn config_show(&self) -> Vec<(String, String)> {
        if let Some(store) = config_store() {
            match store.load() {
                Ok(pairs) => return pairs,
                Err(e) => log::warn!("configuration store: {e}"),
            }
        }
        let mut v = vec![
            ("nic".to_string(), self.host.nic_spec.clone()),
            ("ip".to_string(), format!("{}/{}", self.host.ip, self.host.prefix)),
            ("media".to_string(), self.host.media_source.join(",")),
            ("http_port".to_string(), self.host.http_port.to_string()),
        ];
        if let Some(g) = self.host.gateway {
            v.push(("gateway".to_string(), g.to_string()));
        }
        v
    }

    fn config_set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let Some(mut store) = config_store() else {
            return Err(format!("cannot set {key}: no configuration partition (settings come from the command line)"));
        };
        store.set(key, value).map_err(|e| e.to_string())
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        self.host.tls.as_ref().map(|t| tls_info(t, &self.host.sealer))
    }

    fn tls_install(&mut self, pem: &str) -> Result<(TlsInfo, String), String> {
        let port = self.host.https_port;
        if self.host.tls.is_none() && port == self.host.http_port {
            return Err(format!("the HTTPS port {port} is the HTTP port (serve --https-port)"));
        }
        let state = credentials::install(self.host.tls.as_ref(), pem, port, self.host.tls_tickets, wall_now())?;
        // Stored before it serves: a certificate that cannot be kept changes nothing.
        let note = match config_store() {
            Some(mut store) => {
                store.store_credentials(pem).map_err(|e| e.to_string())?;
                "stored in the configuration partition; new handshakes on every core use it"
            }
            None => "new handshakes on every core use it; not stored (no configuration partition): the start-up certificate serves again after a restart",
        };
        let leaf = &state.chain[0];
        log::info!("tls: certificate {} installed from the console, expires {}", leaf.subject, leaf.expiry(wall_now()));
        Ok((self.serve_with(state), note.to_string()))
    }

    fn tls_rotate_tickets(&mut self) -> Result<TlsInfo, String> {
        let current = self.host.tls.as_ref().ok_or("HTTPS is off")?;
        let state = credentials::rotate_ticket_keys(current)?;
        log::info!("tls: new session-ticket keys from the console; tickets issued before no longer resume");
        Ok(self.serve_with(state))
    }

    fn tls_remove(&mut self) -> Result<(TlsInfo, String), String> {
        let mut store = config_store();
        let stored = store.as_ref().is_some_and(|s| matches!(s.load_credentials(), Ok(Some(_))));
        let Some(current) = self.host.tls.clone() else {
            // Stored credentials that did not load at start: HTTPS is off, and they can go.
            let Some(store) = store.as_mut().filter(|_| stored) else { return Err("HTTPS is off".to_string()) };
            store.clear_credentials().map_err(|e| e.to_string())?;
            let off = TlsInfo { port: self.host.https_port, tickets: self.host.tls_tickets, source: "none: HTTPS is off".to_string(), chain: Vec::new(), now: wall_now(), sealer: self.host.sealer.clone() };
            return Ok((off, "removed from the configuration partition".to_string()));
        };
        if !current.installed && !stored {
            return Err("no certificate was installed from the console".to_string());
        }
        let files = credentials::back_to_files(&current)?;
        if files.is_none() && store.is_none() {
            return Err("no certificate files were given at start to go back to, and no configuration partition holds it: \
                        the installed certificate serves until the appliance restarts"
                .to_string());
        }
        if let Some(store) = store.as_mut() {
            store.clear_credentials().map_err(|e| e.to_string())?;
        }
        log::info!("tls: the certificate installed from the console was removed");
        Ok(match files {
            Some(state) => (self.serve_with(state), "removed; new handshakes on every core use the start-up files again".to_string()),
            None if current.installed => (
                tls_info(&current, &self.host.sealer),
                "removed from the configuration partition; it serves until the appliance restarts (no certificate files were given at start)".to_string(),
            ),
            None => (tls_info(&current, &self.host.sealer), "removed from the configuration partition".to_string()),
        })
    }
}

impl<N: Nic, S: Storage> View<'_, N, S> {
    /// Every core's new handshakes use `state` from now on: this core at once, the others at
    /// their next publication.
    fn serve_with(&mut self, state: TlsState) -> TlsInfo {
        self.pipe.adopt_tls(state.config.clone(), state.port);
        self.board.tls.publish(state.config.clone(), state.port);
        let info = tls_info(&state, &self.host.sealer);
        self.host.tls = Some(state);
        info
    }
}

fn tls_info(t: &TlsState, sealer: &str) -> TlsInfo {
    TlsInfo { port: t.port, tickets: t.tickets, source: t.source.clone(), chain: t.chain.clone(), now: wall_now(), sealer: sealer.to_string() }
}

/// The wall clock in unix seconds (certificate validity).
fn wall_now() -> i64 {
    super::wall_unix() as i64
}
