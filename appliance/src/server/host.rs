//! What the console sees of a running appliance: status, counters, connections and media,
//! and the few things it may change (log level, drain, power).
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use drivers::nic::Nic;
use drivers::storage::Storage;

use super::pipeline::Pipeline;
use super::{monotonic_ns, ServeArgs};
use crate::console::{ConnSummary, ConsoleHost, Counters, Listing, MediaEntry, MediaSummary, PowerAction, StatusInfo};
pub use crate::sys::{allowed_cores, pin_to_core};

/// The configuration partition the image's init found (passed in the environment).
fn config_store() -> Option<crate::boot::config::ConfigStore> {
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
    https_port: Option<u16>,
    media_source: String,
    media_detail: Option<String>,
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
            https_port: args.tls_cert.is_some().then_some(args.https_port),
            media_source: args.media.clone(),
            media_detail: args.media_detail.clone(),
            nic_spec: args.nic.clone(),
            start,
            power: None,
        }
    }

    pub fn view<'a, N: Nic, S: Storage>(&'a mut self, pipe: &'a mut Pipeline<N, S>) -> View<'a, N, S> {
        View { host: self, pipe }
    }
}

pub struct View<'a, N: Nic, S: Storage> {
    host: &'a mut Host,
    pipe: &'a mut Pipeline<N, S>,
}

impl<N: Nic, S: Storage> ConsoleHost for View<'_, N, S> {
    fn status(&self) -> StatusInfo {
        let vol = &self.pipe.app.volume;
        StatusInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime: self.host.start.elapsed(),
            ip: self.host.ip,
            prefix_len: self.host.prefix,
            gateway: self.host.gateway,
            mac: self.pipe.stack.cfg.mac,
            link: self.pipe.nic.link(),
            cores: self.host.cores.iter().take(1).copied().collect(),
            media: MediaSummary {
                backend: self.pipe.app.storage.backend().to_string(),
                source: self.host.media_detail.clone().unwrap_or_else(|| self.host.media_source.clone()),
                objects: vol.objects().len() as u64,
                bytes: vol.data_bytes(),
            },
            draining: self.pipe.app.draining,
            http_port: self.host.http_port,
            https_port: self.host.https_port,
        }
    }

    fn counters(&self) -> Counters {
        Counters {
            stats: self.pipe.stats(),
            nic: self.pipe.nic.counters(),
            nic_driver: self.pipe.nic.link().driver,
            storage: self.pipe.app.storage.counters(),
            storage_backend: self.pipe.app.storage.backend().to_string(),
        }
    }

    fn connections(&self, max: usize) -> Listing<ConnSummary> {
        let now = monotonic_ns(self.host.start);
        let core = self.host.cores.first().copied().unwrap_or(0);
        let entries = self
            .pipe
            .stack
            .connections()
            .take(max)
            .map(|(_, key, e)| ConnSummary {
                remote: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(key.remote_ip), key.remote_port)),
                local_port: key.local_port,
                state: e.tcp.state.name(),
                bytes_sent: e.tcp.counters.bytes_sent,
                age: Duration::from_nanos(now.saturating_sub(e.opened_at)),
                idle: Duration::from_nanos(now.saturating_sub(e.tcp.last_rx())),
                tls: e.app.is_tls(),
                core,
            })
            .collect();
        Listing { total: self.pipe.stack.connection_count(), entries }
    }

    fn media(&self, max: usize) -> Listing<MediaEntry> {
        let objects = self.pipe.app.volume.objects();
        let entries = objects
            .iter()
            .take(max)
            .map(|o| MediaEntry { path: o.path.clone(), size: o.size, content_type: o.content_type.clone() })
            .collect();
        Listing { total: objects.len(), entries }
    }

    fn set_log_level(&mut self, level: log::LevelFilter) {
        log::set_max_level(level);
    }

    fn drain(&mut self) {
        self.pipe.stack.accepting = false;
        self.pipe.app.draining = true;
        // Connections between requests close now; the others after their responses.
        let ids: Vec<_> = self.pipe.stack.connections().filter(|(_, _, e)| e.app.idle()).map(|(id, _, _)| id).collect();
        for id in ids {
            if let Some(e) = self.pipe.stack.get_mut(id) {
                e.tcp.close();
            }
            self.pipe.stack.wake(id);
        }
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
            ("media".to_string(), self.host.media_source.clone()),
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
}
