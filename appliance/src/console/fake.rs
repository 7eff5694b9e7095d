//! A host with fixed, distinctive answers for the console's tests; it records what the
//! console asked it to do.
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::*;

pub struct FakeHost {
    pub log_level: Option<log::LevelFilter>,
    pub draining: bool,
    pub power: Option<PowerAction>,
    pub config: Vec<(String, String)>,
    pub conns_total: usize,
    /// 1 (the default): the media is one volume; more: three drives, the second holding a
    /// copy of `/seg1.ts`, the third not opened at start.
    pub drives: usize,
    /// The certificate `tls` shows (None: HTTPS off).
    pub tls: Option<TlsInfo>,
    /// PEM text each `tls install` handed over, accepted or not.
    pub installed: Vec<String>,
    /// `tls rotate-tickets` that succeeded.
    pub ticket_rotations: u32,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

impl FakeHost {
    pub fn new() -> Self {
        FakeHost {
            log_level: None,
            draining: false,
            power: None,
            config: vec![("idle_timeout_s".to_string(), "30".to_string())],
            conns_total: 1500,
            drives: 1,
            tls: Some(TlsInfo {
                port: 443,
                tickets: true,
                source: "files /etc/appliance/tls/cert.pem, key.pem".to_string(),
                chain: vec![
                    fake_cert("CN=media.example", "CN=Example CA", 1_796_083_200 + 90 * 86_400),
                    fake_cert("CN=Example CA", "CN=Example CA", 2_000_000_000),
                ],
                now: 1_796_083_200,
                sealer: "ring (measured at start: aws-lc-rs 4.08 GB/s, ring 7.29 GB/s)".to_string(),
            }),
            installed: Vec::new(),
            ticket_rotations: 0,
        }
    }
}

/// A certificate as the host would describe it (fixed names and dates).
pub fn fake_cert(subject: &str, issuer: &str, not_after: i64) -> crate::tls::certs::CertSummary {
    crate::tls::certs::CertSummary {
        subject: subject.to_string(),
        issuer: issuer.to_string(),
        names: vec!["media.example".to_string(), "192.0.2.10".to_string()],
        not_before: 1_796_083_200 - 86_400,
        not_after,
        key: "ECDSA P-256".to_string(),
        sha256: [0xab; 32],
    }
}

impl FakeHost {
    fn media_summary(&self) -> MediaSummary {
        let one = DriveSummary { backend: "file".to_string(), source: "/tmp/vol".to_string(), objects: 3, bytes: 6000, failed: None };
        if self.drives < 2 {
            return MediaSummary {
                backend: "file".to_string(),
                source: "/tmp/vol".to_string(),
                objects: 3,
                bytes: 6000,
                drives: vec![one],
                ..Default::default()
            };
        }
        let two = DriveSummary { backend: "nvme-vfio".to_string(), source: "nvme:0000:00:05.0 (model)".to_string(), objects: 1, bytes: 2000, failed: None };
        // A third drive that could not be opened at start.
        let three = DriveSummary {
            backend: "unavailable".to_string(),
            source: "/gone.vol".to_string(),
            failed: Some("/gone.vol: No such file or directory".to_string()),
            ..DriveSummary::default()
        };
        MediaSummary {
            backend: "mixed".to_string(),
            source: "/tmp/vol,nvme:0000:00:05.0,/gone.vol".to_string(),
            objects: 3,
            bytes: 6000,
            drives: vec![one, two, three],
            shadowed: vec![ShadowedPath { path: "/seg1.ts".to_string(), served_from: 0, hidden_on: 1 }],
            shadowed_total: 1,
        }
    }
}

impl ConsoleHost for FakeHost {
    fn status(&self) -> StatusInfo {
        StatusInfo {
            version: "9.8.7".to_string(),
            uptime: Duration::from_secs(86400 + 3600 + 61),
            ip: Ipv4Addr::new(10, 0, 0, 2),
            prefix_len: 24,
            gateway: Some(Ipv4Addr::new(10, 0, 0, 1)),
            mac: [2, 0, 0, 0, 0, 2],
            link: LinkInfo {
                mac: [2, 0, 0, 0, 0, 0x99],
                mtu: 1500,
                up: true,
                driver: "tap".to_string(),
                offloads: drivers::nic::TxOffloads::default(),
            },
            cores: vec![0, 1],
            media: self.media_summary(),
            draining: self.draining,
            http_port: 8080,
            https_port: Some(8443),
            tls_tickets: true,
        }
    }

    fn counters(&self) -> Counters {
        let mut stats = Stats {
            tcp_connections_active: 2,
            tcp_retransmits: 7,
            http_requests: 11,
            tls_handshakes: 4,
            tls_handshakes_resumed: 1,
            ..Stats::default()
        };
        for _ in 0..3 {
            stats.count_status(404);
        }
        for _ in 0..5 {
            stats.count_status(206);
        }
        Counters {
            stats,
            nic: NicCounters {
                rx_packets: 101,
                tx_packets: 202,
                ..NicCounters::default()
            },
            nic_driver: "tap".to_string(),
            storage: StorageCounters {
                reads: 12,
                read_bytes: 12 * 4096,
                errors: 0,
                timeouts: 0,
                resets: 0,
                mapped_reads: 0,
            },
            storage_backend: "file".to_string(),
            drives: (0..if self.drives > 1 { 3 } else { 1 })
                .map(|i| DriveCounters {
                    source: ["/tmp/vol", "nvme:0000:00:05.0", "/gone.vol"][i].to_string(),
                    backend: ["file", "nvme-vfio", "unavailable"][i].to_string(),
                    counters: match i {
                        2 => StorageCounters::default(),
                        _ => StorageCounters { reads: 6 * (i as u64 + 1), errors: i as u64, timeouts: i as u64, resets: i as u64, ..Default::default() },
                    },
                })
                .collect(),
            nic_xstats: vec![("rx_good_packets".to_string(), 101), ("sw_tx_ring_full".to_string(), 0)],
            per_core: vec![
                CoreCounters { core: 0, connections_active: 1, http_requests: 6, ..Default::default() },
                CoreCounters { core: 1, connections_active: 1, http_requests: 5, ..Default::default() },
            ],
        }
    }

    fn connections(&self, max: usize) -> Listing<ConnSummary> {
        let entries = (0..self.conns_total.min(max))
            .map(|i| ConnSummary {
                remote: SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), 40000 + i as u16)),
                local_port: 8080,
                state: "established",
                bytes_sent: 1000 * i as u64,
                age: Duration::from_millis(1500),
                idle: Duration::from_millis(100),
                tls: i % 2 == 1,
                core: i % 2,
            })
            .collect();
        Listing {
            total: self.conns_total,
            entries,
        }
    }

    fn media(&self, max: usize) -> Listing<MediaEntry> {
        let all = [
            ("/index.m3u8", 1000, "application/vnd.apple.mpegurl"),
            ("/seg1.ts", 2000, "video/mp2t"),
            ("/evil\nok", 3000, "text/plain"),
        ];
        let entries = all
            .iter()
            .take(max)
            .enumerate()
            .map(|(i, (p, s, t))| MediaEntry {
                path: p.to_string(),
                drive: if self.drives > 1 { i % 2 } else { 0 },
                size: *s,
                content_type: t.to_string(),
            })
            .collect();
        Listing {
            total: all.len(),
            entries,
        }
    }

    fn set_log_level(&mut self, level: log::LevelFilter) {
        self.log_level = Some(level);
    }

    fn drain(&mut self) {
        self.draining = true;
    }

    fn power(&mut self, action: PowerAction) {
        self.power = Some(action);
    }

    fn config_show(&self) -> Vec<(String, String)> {
        self.config.clone()
    }

    fn config_set(&mut self, key: &str, value: &str) -> Result<(), String> {
        if key == "readonly" {
            return Err(format!("{key} cannot be changed"));
        }
        self.config.push((key.to_string(), value.to_string()));
        Ok(())
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        self.tls.clone()
    }

    fn tls_install(&mut self, pem: &str) -> Result<(TlsInfo, String), String> {
        self.installed.push(pem.to_string());
        let mut info = self.tls.clone().ok_or("HTTPS is off")?;
        if !pem.contains("-----BEGIN CERTIFICATE-----") {
            return Err("no certificate in the PEM text".to_string());
        }
        info.source = "installed from the console".to_string();
        info.chain[0] = fake_cert("CN=renewed.example", "CN=Example CA", info.now + 365 * 86_400);
        self.tls = Some(info.clone());
        Ok((info, "stored in the configuration partition; new handshakes on every core use it".to_string()))
    }

    fn tls_rotate_tickets(&mut self) -> Result<TlsInfo, String> {
        match &self.tls {
            Some(info) if info.tickets => {
                self.ticket_rotations += 1;
                Ok(info.clone())
            }
            Some(_) => Err("session tickets are off".to_string()),
            None => Err("HTTPS is off".to_string()),
        }
    }

    fn tls_remove(&mut self) -> Result<(TlsInfo, String), String> {
        Err("no certificate was installed from the console".to_string())
    }
}
