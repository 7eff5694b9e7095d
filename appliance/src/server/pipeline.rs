//! One core's run-to-completion loop: receive a burst, run TCP and HTTP, poll storage
//! completions, run timers, transmit. Nothing here blocks except an idle wait on the NIC.
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use drivers::nic::{FrameBuf, Nic};
use drivers::storage::Storage;

use super::board::Board;
use super::http_app::{HttpApp, HttpConn};
use crate::console::ConnSummary;
use crate::net::iface::Stack;
use crate::net::Instant;
use crate::stats::Stats;

/// Frames taken from the NIC per iteration.
pub const RX_BURST: usize = 64;
/// Segments sent per iteration at most (the rest wait for the next round).
pub const TX_BUDGET: usize = 256;

/// What one iteration of the loop did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Turn {
    /// Frames came in, reads finished, or segments went out.
    pub worked: bool,
    /// Storage reads are under way.
    pub reads_in_flight: bool,
    /// TLS handshake steps wait for the next iteration.
    pub handshakes_queued: bool,
}

impl Turn {
    /// Whether the loop must go round again at once: it worked, or reads are under way,
    /// whose completions are polled next turn, so it must not wait for the NIC meanwhile
    /// (a retransmission that had to read its bytes again would go out up to a wait later).
    pub fn busy(self) -> bool {
        self.worked || self.reads_in_flight || self.handshakes_queued
    }
}

pub struct Pipeline<N: Nic, S: Storage> {
    pub nic: N,
    pub stack: Stack<HttpConn>,
    pub app: HttpApp<S>,
    rx: Vec<N::Rx>,
}

impl<N: Nic, S: Storage> Pipeline<N, S> {
    pub fn new(nic: N, stack: Stack<HttpConn>, app: HttpApp<S>) -> Self {
        Pipeline { nic, stack, app, rx: Vec::with_capacity(RX_BURST) }
    }

    /// One iteration of the loop at monotonic time `now`: what it did.
    pub fn poll(&mut self, now: Instant) -> Turn {
        let got = self.nic.rx_burst(&mut self.rx, RX_BURST);
        self.stack.warm(self.rx.iter().map(FrameBuf::bytes), &self.app);
        for frame in self.rx.drain(..) {
            let checks = FrameBuf::rx_checksums(&frame);
            self.stack.on_frame(now, FrameBuf::bytes(&frame), checks, &mut self.app, &mut self.nic);
        }
        let handshakes = self.app.poll_handshakes(now, &mut self.stack);
        let done = self.app.poll_storage(&mut self.stack);
        self.stack.poll_timers(now, &mut self.app);
        let sent = self.stack.poll_tx(now, &mut self.app, &mut self.nic, TX_BUDGET);
        self.nic.tx_flush();
        Turn { worked: got > 0 || handshakes > 0 || done > 0 || sent > 0, reads_in_flight: self.app.reads_in_flight() > 0, handshakes_queued: self.app.handshakes_queued() > 0 }
    }

    /// Stop accepting connections: those between requests close now, the others after
    /// their responses.
    pub fn drain(&mut self) {
        self.stack.accepting = false;
        self.app.draining = true;
        let ids: Vec<_> = self.stack.connections().filter(|(_, _, e)| e.app.idle()).map(|(id, _, _)| id).collect();
        for id in ids {
            if let Some(e) = self.stack.get_mut(id) {
                e.tcp.close();
            }
            self.stack.wake(id);
        }
    }

    /// New handshakes on `port` use `config` from now on (HTTPS starts if it was off);
    /// handshakes under way and sessions keep the configuration they started with.
    pub fn adopt_tls(&mut self, config: std::sync::Arc<rustls::ServerConfig>, port: u16) {
        if !self.stack.cfg.listen_ports.contains(&port) {
            self.stack.cfg.listen_ports.push(port);
        }
        self.app.enable_tls(config, port);
    }

    /// At most `max` of this core's connections as the console lists them.
    pub fn connection_summaries(&self, max: usize, now: Instant, core: usize) -> Vec<ConnSummary> {
        self.stack
            .connections()
            .take(max)
            .map(|(_, key, e)| ConnSummary {
                remote: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::from(key.remote_ip), key.remote_port)),
                local_port: key.local_port,
                state: e.tcp.state.name(),
                bytes_sent: e.tcp.counters.bytes_sent,
                age: Duration::from_nanos(now.saturating_sub(e.opened_at)),
                idle: Duration::from_nanos(now.saturating_sub(e.tcp.last_progress())),
                tls: e.app.is_tls(),
                core,
            })
            .collect()
    }

    /// Publish this core's counters (pipeline `index` on CPU `core`) for the console, and a
    /// connection listing if one was asked for.
    pub fn publish(&self, board: &Board, index: usize, core: usize, now: Instant) {
        board.publish(index, |report, wanted| {
            report.stats = self.stats();
            report.nic = self.nic.counters();
            report.storage = self.app.storage.counters();
            // Refilled in place: no allocation after the first publication.
            report.drives.clear();
            report.drives.extend((0..self.app.storage.drives()).map(|d| self.app.storage.drive_counters(d)));
            if let Some((request, max)) = wanted {
                report.conns = self.connection_summaries(max, now, core);
                report.conns_total = self.stack.connection_count();
                report.conns_answered = request;
            }
        });
    }

    /// Every counter of this core, TCP counters of live connections included.
    pub fn stats(&self) -> Stats {
        let mut s = self.stack.stats;
        s += self.app.stats;
        let (rexmit, fast, rto) = self.stack.live_tcp_counters();
        s.tcp_retransmits += rexmit;
        s.tcp_fast_retransmits += fast;
        s.tcp_rto_timeouts += rto;
        s.tcp_connections_active = self.stack.connection_count() as u64;
        s
    }
}
